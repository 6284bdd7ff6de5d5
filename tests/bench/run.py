"""`make bench`: run every benchmark of the project and write one table of figures,
each next to the baseline measured in the same run.

    python -m tests.bench.run [--only NAME ...] [--out DIR] [--timeout SECONDS]

Every module `tests/bench/bench_*.py` exposes `run() -> list[dict]` with rows
{"name", "value", "unit", "baseline", "baseline_value"}. The table goes to stdout and,
as Markdown and JSON, to DIR (default bench-results/). A benchmark that fails is
reported in the table and makes the command exit non-zero; the others still run.
Each module runs in a child process of its own with a time budget, so one that hangs,
crashes the interpreter or leaves threads behind cannot stop the rest: past its budget
it gets SIGINT (its cleanup runs: nodes are stopped), then SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Modules that need more than --timeout on a quiet 2-core machine, and how long: the
# stored-data one generates a 200,000-message home through the storage path first.
BUDGETS = {"bench_scale": 900.0}


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def ratio(row: dict[str, Any]) -> str:
    base, value = row.get("baseline_value"), row.get("value")
    if isinstance(base, (int, float)) and isinstance(value, (int, float)) and base:
        return f"{value / base:.2f}×"
    return ""


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['cores']} cores, {meta['python']}, {meta['machine']}.",
        "",
        "| benchmark | figure | baseline (same run) | ratio |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | FAILED: {r['error']} | | |")
            continue
        base = f"{r.get('baseline_value')} {r['unit']} ({r.get('baseline')})" \
            if r.get("baseline") else ""
        lines.append(f"| {r['name']} | {r['value']} {r['unit']} | {base} | {ratio(r)} |")
    return "\n".join(lines) + "\n"


def run_child(name: str, out: Path) -> int:
    """In the child: run one module, its rows to `out` as JSON."""
    try:
        rows = importlib.import_module(f"tests.bench.{name}").run()
    except BaseException as exc:  # one broken benchmark must not hide the others
        traceback.print_exc()
        rows = [{"name": name, "error": f"{type(exc).__name__}: {exc}"}]
    out.write_text(json.dumps(rows))
    return 0


def run_module(name: str, timeout: float) -> list[dict[str, Any]]:
    """Run one module in a child process (own process group) within `timeout`."""
    with tempfile.TemporaryDirectory(prefix="p2pm-bench-") as tmp:
        out = Path(tmp) / "rows.json"
        proc = subprocess.Popen([sys.executable, "-m", "tests.bench.run", "--child", name,
                                 "--rows", str(out)], start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
                    break
            return [{"name": name, "error": f"timed out after {timeout:g}s"}]
        if not out.exists():
            return [{"name": name, "error": f"the benchmark process exited {proc.returncode} "
                                            "without results"}]
        return list(json.loads(out.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pm-bench")
    parser.add_argument("--only", nargs="*", default=None, help="bench module names")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds each benchmark module may take (at least "
                             "its BUDGETS entry)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child, args.rows)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine()}
    rows: list[dict[str, Any]] = []
    failed = False
    for name in discover():
        if args.only and name not in args.only and name.removeprefix("bench_") not in args.only:
            continue
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        got = run_module(name, max(args.timeout, BUDGETS.get(name, 0.0)))
        failed = failed or any("error" in r for r in got)
        for r in got:
            r.setdefault("module", name)
            if "error" not in r:
                print(f"   {r['name']}: {r['value']} {r['unit']}"
                      + (f"  (baseline {r['baseline']}: {r['baseline_value']}, {ratio(r)})"
                         if r.get("baseline") else ""), flush=True)
        print(f"   ({time.perf_counter() - started:.1f}s)", flush=True)
        rows += got
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, meta)
    (args.out / "bench.md").write_text(table)
    (args.out / "bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print()
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
