"""What narrowing the TransformerLens 3.9 test set loses, in lines of ``src/anchor_flow``.

Reads three coverage data files (``coverage.py``, e.g. from ``pytest --cov=anchor_flow
--cov-report= -p xdist``, then ``mv .coverage NAME``):

* ``--before``: TL 3.9, the old ``-m tl_line`` set;
* ``--after``: TL 3.9, the new ``-m tl_line`` set;
* ``--other``: TL 4.x, the whole suite (what ``.ci/run`` runs there).

Prints how many lines each covers, then every line that only the dropped tests executed on 3.9
(in ``--before``, in neither ``--after`` nor ``--other``), by file; exits with 1 when there is
any. Lines run only in a subprocess a test starts are not measured in any of the three.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from coverage import CoverageData


def _lines(path: str) -> dict[str, set[int]]:
    data = CoverageData(basename=path)
    data.read()
    files = {}
    for name in data.measured_files():
        if "/anchor_flow/" in name:
            key = name[name.index("/anchor_flow/") + 1 :]
            files[key] = set(data.lines(name) or ())
    return files


def _count(files: dict[str, set[int]]) -> int:
    return sum(len(lines) for lines in files.values())


def _ranges(lines: Iterable[int]) -> str:
    spans: list[list[int]] = []
    for line in sorted(lines):
        if spans and line == spans[-1][1] + 1:
            spans[-1][1] = line
        else:
            spans.append([line, line])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("before", "after", "other"):
        parser.add_argument(f"--{name}", required=True, type=Path)
    args = parser.parse_args()
    before, after, other = (_lines(str(p)) for p in (args.before, args.after, args.other))
    print(f"TL 3.9, old tl_line set: {_count(before)} lines of anchor_flow executed")
    print(f"TL 3.9, new tl_line set: {_count(after)} lines")
    print(f"TL 4.x, whole suite:     {_count(other)} lines")
    lost = {}
    for name, lines in sorted(before.items()):
        only = lines - after.get(name, set()) - other.get(name, set())
        if only:
            lost[name] = only
    print(f"executed on 3.9 only by the dropped tests: {_count(lost)} lines")
    for name, lines in lost.items():
        print(f"  {name}: {_ranges(lines)}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
