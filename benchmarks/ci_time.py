"""Wall time of ``.ci/run`` on a clean clone, quiet or under load, step by step.

Clones the repository's ``HEAD`` (``--repo``, default: this checkout) into a fresh temporary
folder, starts ``--busy`` pure-Python busy-loop processes (as ``benchmarks/contention.py``
makes them; default 0), runs the clone's ``.ci/run`` and prints how long each of its steps
(the ``== ... (at Ns) ==`` lines) took, then the total. ``.ci/run``'s full output goes to
``--log``. Exits with ``.ci/run``'s exit code. Other work on the machine slows the run too:
say what else ran next to the numbers. Example::

    python benchmarks/ci_time.py --busy 2 --log /tmp/ci-busy.log
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contention import busy_processes  # benchmarks/contention.py, beside this file

STEP = re.compile(r"^== (?P<name>.*) \(at (?P<at>\d+)s\) ==$")


def _steps(lines: list[str], total: float) -> list[tuple[str, float]]:
    marks = [(m["name"], float(m["at"])) for line in lines if (m := STEP.match(line))]
    ends = [at for _, at in marks[1:]] + [total]
    return [(name, end - at) for (name, at), end in zip(marks, ends, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--busy", type=int, default=0, help="background busy processes (0)")
    parser.add_argument("--log", default=None, help="where .ci/run's output goes")
    parser.add_argument("--keep", action="store_true", help="keep the clone")
    args = parser.parse_args()
    clone = Path(tempfile.mkdtemp(prefix="ci-time-")) / "repo"
    subprocess.run(["git", "clone", "-q", args.repo, str(clone)], check=True)
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    log = Path(args.log or f"{tempfile.gettempdir()}/ci-time-{commit}-busy{args.busy}.log")
    print(f"commit {commit}; cores: {os.cpu_count()}; busy processes: {args.busy}; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    clock = time.perf_counter()
    with busy_processes(args.busy), log.open("w") as sink:
        done = subprocess.run([str(clone / ".ci" / "run")], cwd=clone, stdout=sink,
                              stderr=subprocess.STDOUT, check=False)  # fmt: skip
    total = time.perf_counter() - clock
    lines = log.read_text(errors="replace").splitlines()
    for name, seconds in _steps(lines, total):
        print(f"{max(seconds, 0.0):7.0f} s  {name}")
    print(f"{total:7.0f} s  total ({total / 60:.1f} min), exit code {done.returncode}; "
          f"log: {log}")  # fmt: skip
    if not args.keep:
        shutil.rmtree(clone.parent, ignore_errors=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
