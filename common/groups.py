"""Guards that keep a task's failure from taking its actor down, told apart from the
actor's own stop.

Trio groups strictly: a task that holds a nursery and is cancelled while one of its
children fails (a peer resets a stream as the actor stops, the stream client closes
under a pending send) ends in a BaseExceptionGroup of that error and Cancelled.
`except Exception` does not catch such a group, so it escapes the guard whole; the
cancel scope that is stopping the actor then strips the Cancelled, and an
ExceptionGroup of the peer's error comes out of the actor's nursery: a clean stop
raises. The guard must handle the error and let the Cancelled go on up.

`except* Exception:` says exactly that, and is what a guard whose handler only logs
uses. A handler that returns (an RPC reply, a stream refused) cannot live in an
`except*` block; it keeps its `except Exception as exc:` and adds

    except BaseExceptionGroup as group:
        handle_beside_cancel(group, on_error)

which hands the group's error to the same handler and raises what is left."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn


def first_error(group: BaseExceptionGroup) -> Exception:
    """The first Exception among `group`'s leaves, however deeply nested: what a
    handler written for one exception (its message, its type) should see. A group of
    one error and Cancelled, the usual case, has only the one."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            errors, _ = exc.split(Exception)
            if errors is not None:
                return first_error(errors)
        elif isinstance(exc, Exception):
            return exc
    raise ValueError("the group holds no Exception")


def handle_beside_cancel(group: BaseExceptionGroup,
                         handle: Callable[[Exception], Any]) -> NoReturn:
    """For an `except BaseExceptionGroup` clause after `except Exception as exc`:
    `handle` gets the group's first error, as that clause would have (while the
    group's errors are the exception being handled, so a log with a traceback shows
    them all), then the rest (Cancelled, KeyboardInterrupt...) is raised. What
    `handle` returns is dropped: the task is being cancelled, nobody waits for it."""
    errors, rest = group.split(Exception)
    if errors is not None:
        try:
            raise errors
        except Exception:
            handle(first_error(errors))
    assert rest is not None  # a BaseExceptionGroup always holds a non-Exception
    raise rest
