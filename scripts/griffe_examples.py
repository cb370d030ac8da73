"""A griffe extension for the documentation site: the package's docstrings head their
doctests ``Example:``, which Google-style parsing (griffe) reads as an admonition, so the
doctest output would be rendered as Markdown (``['a', 'b']`` looks like a cross-reference).
This renames the heading to ``Examples:``, the section griffe renders as code. The
docstrings themselves are unchanged (doctest and ``help()`` read them as written)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class DoctestExamples(griffe.Extension):
    """Rename every docstring's ``Example:`` heading to ``Examples:``."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
