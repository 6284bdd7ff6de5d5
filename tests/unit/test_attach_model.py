"""The attach screen's model against a scripted gateway: delivery marks never go
stale or backwards, whatever order the history and the state events arrive in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p2pm.common.cli.attach import AttachModel
from p2pm.common.home import Home


class Scripted(AttachModel):
    """The gateway answers from `history`; `during_history` runs while a history
    request is on its way (as events are handled meanwhile in the real screen)."""

    history: list[dict[str, Any]]
    during_history: list[tuple[str, dict[str, Any]]]

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if method == "history":
            snapshot = [dict(m) for m in self.history]
            for topic, data in self.during_history:
                await self.on_event(topic, data)
            return snapshot
        assert method == "mark_read"
        return {}


def model(tmp_path: Path, history: list[dict[str, Any]],
          during: list[tuple[str, dict[str, Any]]] = []) -> Scripted:  # noqa: B006
    m = Scripted(Home(tmp_path), current="conv")
    m.history, m.during_history = history, during
    return m


def mine(state: str) -> dict[str, Any]:
    return {"id": "m1", "author": "me", "body": "hello", "ts": 0, "state": state}


def state(value: str) -> tuple[str, dict[str, Any]]:
    return ("gateway.message.state", {"id": "m1", "conversation": "conv", "state": value})


async def test_a_receipt_handled_while_the_history_loads_is_not_lost(tmp_path: Path) -> None:
    # Right after posting: the history read says "sent", and the receipt's event came
    # while it was on its way (so there was no message on screen to mark).
    m = model(tmp_path, [mine("sent")], during=[state("delivered")])
    await m.load_current()
    assert m.message_lines()[0].endswith("✓✓")


async def test_marks_only_move_forward(tmp_path: Path) -> None:
    m = model(tmp_path, [mine("sent")])
    await m.load_current()
    assert m.message_lines()[0].endswith("  ✓")
    await m.on_event(*state("delivered"))
    assert m.message_lines()[0].endswith("✓✓")
    await m.on_event(*state("sent"))  # a late event about an earlier step
    assert m.message_lines()[0].endswith("✓✓")
    # A history older than what the events told changes nothing either.
    m.history = [mine("pending")]
    await m.load_current()
    assert m.message_lines()[0].endswith("✓✓")


async def test_bad_state_events_change_nothing(tmp_path: Path) -> None:
    m = model(tmp_path, [mine("sent")])
    await m.load_current()
    for data in ({"id": "m1"}, {"id": 5, "state": "delivered"}, {"state": "delivered"},
                 {"id": "m1", "state": None}):
        await m.on_event("gateway.message.state", data)
    assert m.message_lines()[0].endswith("  ✓")
    assert not m.states
