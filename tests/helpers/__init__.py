"""Shared test tools: real nodes under supervisord (`node_factory` in conftest.py uses
them) and skip markers for tests that need more than a developer's machine gives."""

from __future__ import annotations

import os
import shutil

import pytest

from .node import (ActorProcesses, Node, await_for, clean_env, destroy_home, kill_group, make_home,
                   p2pm_argv, processes_under, run_p2pm, running_node, start_node, wait_for)

# Network-namespace tests create interfaces and namespaces: root and iproute2 only.
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 (network namespaces)")

__all__ = ["ActorProcesses", "Node", "await_for", "clean_env", "destroy_home", "kill_group", "make_home", "needs_root",
           "p2pm_argv", "processes_under", "run_p2pm", "running_node", "start_node", "wait_for"]
