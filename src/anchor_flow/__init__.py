"""anchor_flow: information-flow analysis of in-context learning on TransformerLens models.

Implements "Label Words are Anchors" (Wang et al., EMNLP 2023). Start with::

    from anchor_flow import load_model, run_saliency, toy_prompts, plot_flows
    result = run_saliency(load_model("toy-gpt2"), toy_prompts(32))
    plot_flows(result.flows())
"""

from anchor_flow.edges import FINE_GROUPS, PAPER_FLOWS, edge_groups, paper_edge_masks
from anchor_flow.errors import (
    AnchorFlowError,
    ContextLengthError,
    DeadAttentionHooksError,
    LabelWordError,
    ModelLoadError,
    PromptError,
    ResultsError,
    UnsupportedModelError,
)
from anchor_flow.flows import InformationFlow
from anchor_flow.loading import from_hf_model, load_model
from anchor_flow.plotting import plot_flows, plot_group_matrix, plot_saliency_heatmap
from anchor_flow.prompts import (
    Example,
    ICLPrompt,
    Template,
    load_prompts,
    save_prompts,
    tokenize_prompts,
    toy_prompts,
)
from anchor_flow.report import ReportSection, write_report
from anchor_flow.roles import PromptBatch, Role
from anchor_flow.saliency import label_logits, run_saliency, saliency_hooks
from anchor_flow.saliency_result import SaliencyResult

__version__ = "0.1.0"

__all__ = [
    "FINE_GROUPS",
    "PAPER_FLOWS",
    "AnchorFlowError",
    "ContextLengthError",
    "DeadAttentionHooksError",
    "Example",
    "ICLPrompt",
    "InformationFlow",
    "LabelWordError",
    "ModelLoadError",
    "PromptBatch",
    "PromptError",
    "ReportSection",
    "ResultsError",
    "Role",
    "SaliencyResult",
    "Template",
    "UnsupportedModelError",
    "__version__",
    "edge_groups",
    "from_hf_model",
    "label_logits",
    "load_model",
    "load_prompts",
    "paper_edge_masks",
    "plot_flows",
    "plot_group_matrix",
    "plot_saliency_heatmap",
    "run_saliency",
    "saliency_hooks",
    "save_prompts",
    "tokenize_prompts",
    "toy_prompts",
    "write_report",
]
