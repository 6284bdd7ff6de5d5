"""Where a node's CPU goes, by stage: the optional profile of `bench_gossip`.

Off unless `P2PM_BENCH_PROFILE=1`. Then each rate step of the p2pm side runs py-spy
(a sampling profiler in its own process, `--nonblocking`: the node is never paused) on
every node process, and reads every node thread's CPU time from /proc before and after.
The zmq I/O threads' CPU is exact and reported as its own row; the rest of the
process's CPU (its Python threads: the trio loop and trio's worker threads) is split
over stages in proportion to py-spy's samples (non-idle samples only, so a thread
waiting in epoll or on the GIL counts nothing). A thread that is runnable but waiting
for a CPU counts as busy where it stands, often just after a send that woke another
thread; on a loaded machine that inflates those places, so the time the node threads
spent on the run queue is measured too (/proc schedstat) and printed with the table.

A sample goes to the stage of the innermost frame whose file a rule in `STAGES` names
(first rule matching wins). Frames of trio and of files no rule names (the standard
library, pynacl's and pyzmq's Python layers) are passed over, so a lock taken by Yamux
counts as Yamux and base64 called by the stream frames as stream frames; a sample with
nothing but trio and such frames is the event loop itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

RATE_HZ = 200  # py-spy samples per second and node process
EVENT_LOOP = "event loop (trio scheduler, task switches)"
ZMQ_THREADS = "bus: zmq I/O threads (libzmq, exact)"

# (substring of a file's path, stage); first match wins, so specific before general.
STAGES: tuple[tuple[str, str], ...] = (
    ("/services/gossip/router/signing.py", "signing/verification"),
    ("/services/keystore/", "signing/verification"),
    ("/common/identity.py", "signing/verification"),
    ("/services/gossip/router/", "router (gossipsub core)"),
    ("/services/gossip/conversations.py", "envelope open/seal"),
    ("/services/gossip/roomcrypto.py", "envelope open/seal"),
    ("/services/gossip/sessions.py", "envelope open/seal"),
    ("/services/storage/", "storage"),
    ("/services/gossip/receive.py", "events/publish (receive path)"),
    ("/services/gossip/delivery.py", "receipts/outbox (delivery)"),
    ("/services/gossip/outbox.py", "receipts/outbox (delivery)"),
    ("/services/gossip/sync", "sync"),
    ("/services/gossip/links.py", "maintenance (links, reach, membership)"),
    ("/services/gossip/reach.py", "maintenance (links, reach, membership)"),
    ("/services/gossip/membership.py", "maintenance (links, reach, membership)"),
    ("/services/gossip/strangers.py", "maintenance (links, reach, membership)"),
    ("/services/gossip/actor.py", "gossip actor shell"),
    ("/services/gossip/", "gossip other"),
    ("/common/streams/", "stream frames (transport<->actor)"),
    ("/services/transport/hub.py", "stream frames (transport<->actor)"),
    ("/services/transport/", "transport shell (ours)"),
    ("/libp2p/stream_muxer/", "libp2p: yamux"),
    ("/libp2p/security/", "libp2p: noise"),
    ("/noise/", "libp2p: noise"),
    ("/libp2p/", "libp2p: other (swarm, network, identify)"),
    ("/cryptography/", "libp2p: noise"),
    ("/common/zmqtrio.py", "bus (zmqtrio, rpc, events)"),
    ("/common/actor/", "bus (zmqtrio, rpc, events)"),
    ("/common/client", "bus (zmqtrio, rpc, events)"),
    ("/common/wire.py", "bus (zmqtrio, rpc, events)"),
    ("/common/", "common other"),
    ("/site-packages/structlog/", "logging"),
    ("/logging/", "logging"),
)


def where_in_stack(frames: list[str]) -> tuple[str, str]:
    """(stage, the frame that decided it) for one collapsed py-spy stack
    (`func (file:line)` frames, outermost first)."""
    saw_trio = False
    for frame in reversed(frames):
        # py-spy names files relative to their sys.path entry: "trio/_run.py:42)".
        path = "/" + frame.rsplit("(", 1)[-1]
        if "/trio/" in path:
            saw_trio = True
            continue
        for part, stage in STAGES:
            if part in path:
                return stage, _function(frame)
    if saw_trio:
        return EVENT_LOOP, _function(frames[-1])
    return "other: " + (frames[-1].rsplit("(", 1)[-1].split(":")[0] if frames else "?"), ""


def _function(frame: str) -> str:
    return frame.rsplit(":", 1)[0] + ")"  # without the line: one row per function


def run_queue_s(pid: int) -> float:
    """Seconds the threads of `pid` have spent runnable but waiting for a CPU."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of `pid`, by "tid name"."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                name, rest = f.read().split(" (", 1)[1].rsplit(")", 1)
            fields = rest.split()
            out[f"{tid} {name}"] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


class Window:
    """One profiled step over some node processes: `start()`, then `stop()`."""

    def __init__(self, pids: list[int], workdir: Path) -> None:
        self.pids = pids
        self.workdir = workdir
        self._spies: list[subprocess.Popen[bytes]] = []
        self._cpu0: list[dict[str, float]] = []
        self.functions: dict[str, float] = {}  # "stage | function": CPU s, after stop()
        # After stop(): how long the nodes' threads were runnable but off CPU. py-spy
        # counts such a thread as busy where it stands, often just after a send that
        # woke another thread, so when this is large next to the CPU figures (a busy
        # machine), the rows lean towards those places.
        self.run_queue_s = 0.0
        self.profiler_cpu_s = 0.0  # what the py-spy processes used, on the same cores
        self._queue0: list[float] = []

    def start(self) -> None:
        spy = str(Path(sys.executable).with_name("py-spy"))
        self._cpu0 = [thread_cpu(pid) for pid in self.pids]
        self._queue0 = [run_queue_s(pid) for pid in self.pids]
        for pid in self.pids:
            out = self.workdir / f"spy-{pid}.raw"
            out.unlink(missing_ok=True)
            self._spies.append(subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--rate", str(RATE_HZ),
                 "--nonblocking", "--format", "raw", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> dict[str, float]:
        """CPU seconds per stage over all node processes, since `start()`."""
        cpu1 = [thread_cpu(pid) for pid in self.pids]
        self.run_queue_s = sum(run_queue_s(pid) - q for pid, q in zip(self.pids, self._queue0))
        for spy in self._spies:
            spy.send_signal(signal.SIGINT)
        self.profiler_cpu_s = 0.0
        for spy in self._spies:
            _, _, usage = os.wait4(spy.pid, 0)  # reaped here, with its CPU time
            spy.returncode = 0
            self.profiler_cpu_s += usage.ru_utime + usage.ru_stime
        self._spies = []
        stages: dict[str, float] = {}
        for pid, before, after in zip(self.pids, self._cpu0, cpu1):
            used = {t: after[t] - before.get(t, 0.0) for t in after}
            zmq_s = sum(s for t, s in used.items() if " ZMQbg" in t)
            stages[ZMQ_THREADS] = stages.get(ZMQ_THREADS, 0.0) + zmq_s
            python_s = sum(used.values()) - zmq_s
            samples: dict[str, int] = {}
            by_frame: dict[str, int] = {}
            raw = self.workdir / f"spy-{pid}.raw"
            for line in raw.read_text().splitlines() if raw.exists() else ():
                stack, _, count = line.rpartition(" ")
                stage, frame = where_in_stack(stack.split(";"))
                samples[stage] = samples.get(stage, 0) + int(count)
                key = f"{stage} | {frame}"
                by_frame[key] = by_frame.get(key, 0) + int(count)
            total = sum(samples.values())
            for stage, n in samples.items():
                stages[stage] = stages.get(stage, 0.0) + python_s * n / total
            for key, n in by_frame.items():
                self.functions[key] = self.functions.get(key, 0.0) + python_s * n / total
            if not total:
                stages["unsampled"] = stages.get("unsampled", 0.0) + python_s
        return stages


def table(stages: dict[str, float], delivered: int) -> list[tuple[str, float, float]]:
    """(stage, ms of CPU per delivered message, % of all), largest first."""
    cpu = sum(stages.values()) or 1.0
    rows = [(stage, 1000 * s / max(1, delivered), 100 * s / cpu)
            for stage, s in stages.items()]
    return sorted(rows, key=lambda r: -r[1])
