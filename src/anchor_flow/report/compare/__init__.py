"""Compare runs (issue 25): one view of several results folders across models, tasks and seeds.

``folders`` reads what one ``anchor-flow run`` wrote (``results.json``, the CSVs each step
writes, the findings) and says what is missing; ``comparison`` joins several runs into
:class:`RunComparison`, long frames keyed by run, on one axis of relative depth
(layer / (n_layers - 1)) where layer counts differ; ``figures`` draws it (plotly figures,
returned); ``page`` writes the one self-contained HTML page of ``anchor-flow compare``.
Reads files only: never runs a model.

Part of its parent package; the parent's import rules apply.
"""

from anchor_flow.report.compare.comparison import RunComparison, compare_runs
from anchor_flow.report.compare.figures import (
    plot_compare_auc,
    plot_compare_flows,
    plot_compare_heads,
    plot_compare_isolation,
)
from anchor_flow.report.compare.page import comparison_sections, write_comparison

__all__ = [
    "RunComparison",
    "compare_runs",
    "comparison_sections",
    "plot_compare_auc",
    "plot_compare_flows",
    "plot_compare_heads",
    "plot_compare_isolation",
    "write_comparison",
]
