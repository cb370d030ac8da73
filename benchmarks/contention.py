"""Wall time of ``anchor-flow run`` on an idle CPU and under a background load, in one go.

Runs the same ``anchor-flow run`` command (default: the default run, every experiment on the
demo model; pass reduced settings after ``--``) into a fresh folder three times:

* ``idle``: nothing else started by this script;
* ``loaded``: while ``--busy`` (default 2) pure-Python busy-loop processes occupy the CPU;
* ``loaded, torch default threads``: the same load with the run's thread policy disabled
  (``ANCHOR_FLOW_THREADS=default``), to show the cause (``--skip-default`` leaves it out).

``OMP_NUM_THREADS`` is removed from the run's environment so that the library's thread policy
(:mod:`anchor_flow.run.threads`) is what is measured. Prints each wall time and loaded / idle
(issue 15's target: at most 2x). Other processes on the machine load it too: say so next to
the numbers. Example::

    python benchmarks/contention.py -- --seeds 42 --n-examples 20 --top-trials 2 --epochs 1
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def _busy() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """``count`` pure-Python busy-loop processes for the duration of the block."""
    workers = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(count)]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        for worker in workers:
            worker.terminate()
            worker.join()


def _timed_run(extra: list[str], env: dict[str, str]) -> float:
    out = Path(tempfile.mkdtemp(prefix="contention-")) / "run"
    entry = "from anchor_flow.cli import main; raise SystemExit(main())"
    command = [sys.executable, "-c", entry, "run", "--quiet", "--out", str(out)]
    clock = time.perf_counter()
    subprocess.run([*command, *extra], env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - clock
    shutil.rmtree(out.parent, ignore_errors=True)
    return seconds


def _loaded(extra: list[str], env: dict[str, str], busy: int) -> float:
    with busy_processes(busy):
        return _timed_run(extra, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--busy", type=int, default=2, help="background busy processes (2)")
    parser.add_argument("--skip-default", action="store_true",
                        help="do not measure torch's default threads under load")  # fmt: skip
    parser.add_argument("run_args", nargs="*", help="arguments after -- go to anchor-flow run")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    print(f"cores: {os.cpu_count()}; load average before: {os.getloadavg()[0]:.2f}")
    idle = _timed_run(args.run_args, env)
    print(f"idle:                             {idle:7.1f} s")
    loaded = _loaded(args.run_args, env, args.busy)
    print(f"{args.busy} busy processes:                 {loaded:7.1f} s  "
          f"(loaded / idle = {loaded / idle:.2f}; target <= 2)")  # fmt: skip
    if not args.skip_default:
        default = _loaded(args.run_args, {**env, "ANCHOR_FLOW_THREADS": "default"}, args.busy)
        print(f"{args.busy} busy, torch default threads:    {default:7.1f} s  "
              f"(/ idle = {default / idle:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
