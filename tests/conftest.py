"""Fixtures every test folder shares.

`node_factory` starts real nodes (`p2pm init` + `p2pm up` in a short home under /tmp)
and tears every one down at the end of the test, whatever happened: `p2pm down`, then
SIGKILL of anything left in the home, then the folder is removed. `node` is one such
node. `short_tmp` is a short scratch folder for tests that make homes themselves. A
node costs about a second to start and one to stop; `node_factory.many(n)`
starts several at once.

    def test_three(node_factory):
        a, b, c = node_factory.many(3)
        d = node_factory(passphrase="s3cret", up=False)   # init only
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from p2pm.common.home import Home
from tests.helpers import Node, destroy_home, make_home, start_node


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """An empty folder with a short path (/tmp/p2pm-XXXXXXXX), removed afterwards:
    ipc socket paths must stay under 107 bytes, which pytest's tmp_path does not."""
    root = Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class NodeFactory:
    def __init__(self) -> None:
        self.homes: list[Home] = []
        self.nodes: list[Node] = []

    def __call__(self, **kw: Any) -> Node:
        home = make_home()
        self.homes.append(home)
        node = start_node(home, **kw)
        self.nodes.append(node)
        return node

    def many(self, count: int, **kw: Any) -> list[Node]:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: self(**kw), range(count)))

    def close(self) -> None:
        with ThreadPoolExecutor(max(1, len(self.homes))) as pool:
            list(pool.map(lambda n: n.destroy(), self.nodes))
            # Homes whose init or up failed have no Node, and may hold processes.
            list(pool.map(destroy_home, [h for h in self.homes if h.root.exists()]))


@pytest.fixture
def node_factory() -> Iterator[NodeFactory]:
    factory = NodeFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def node(node_factory: NodeFactory) -> Node:
    return node_factory()
