"""Fixtures of the namespace lab: skip cleanly without root, clear leftovers of an
earlier run once per session, and tear every lab down on every exit path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .lab import Lab, lab_missing, remove_leftovers


@pytest.fixture(scope="session")
def lab_ready() -> None:
    missing = lab_missing()
    if missing:
        pytest.skip(missing)
    remove_leftovers()


@pytest.fixture
def make_lab(lab_ready: None) -> Iterator[Callable[..., Lab]]:
    labs: list[Lab] = []

    def build(**kw: Any) -> Lab:
        lab = Lab(**kw)
        labs.append(lab)
        return lab.build()

    try:
        yield build
    finally:
        for lab in labs:
            lab.close()
