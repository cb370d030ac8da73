#!/usr/bin/env bash
# Build or serve the documentation site (MkDocs Material + mkdocstrings + mkdocs-jupyter).
#   scripts/docs.sh            build into site/ with --strict (what .ci/run does)
#   scripts/docs.sh serve      build and serve at http://127.0.0.1:8000, rebuilding on edits
# Needs the docs extra: .venv/bin/pip install -e ".[docs]". The notebooks are executed once
# into docs/notebooks/ (git-ignored) and re-executed only when one changes.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
export NO_MKDOCS_2_WARNING=1
"$python" scripts/execute_notebooks.py
case "${1:-build}" in
    serve) shift; exec "$python" -m mkdocs serve --strict "$@" ;;
    build) shift || true; exec "$python" -m mkdocs build --strict "$@" ;;
    *) echo "usage: scripts/docs.sh [build|serve] [mkdocs options]" >&2; exit 2 ;;
esac
