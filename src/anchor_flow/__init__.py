"""anchor_flow: information-flow analysis of in-context learning on TransformerLens models.

Implements "Label Words are Anchors" (Wang et al., EMNLP 2023). Start with::

    from anchor_flow import load_model, run_saliency, toy_prompts, plot_flows
    result = run_saliency(load_model("toy-gpt2"), toy_prompts(32))
    plot_flows(result.flows())
"""

import os as _os
import sys as _sys

from anchor_flow._version import __version__


def _interrupted_during_start_up() -> None:
    """Ctrl-C while the ``anchor-flow`` command imports the package (torch, TransformerLens:
    seconds): one line and exit code 130, as after start-up. Imports by anyone else (a
    notebook, a script) get their KeyboardInterrupt back unchanged."""
    if _sys.argv and _os.path.basename(_sys.argv[0]) in ("anchor-flow", "anchor-flow.exe"):
        _sys.stderr.write("anchor-flow: interrupted\n")
        raise SystemExit(130)


try:
    from anchor_flow.analysis.blocking import (
        BlockingError,
        block_edges_hooks,
        blocking_hooks,
        head_mask,
        isolation_hooks,
        isolation_mask,
        random_rows,
        role_pair_mask,
    )
    from anchor_flow.analysis.deep import DeepResult, run_deep
    from anchor_flow.analysis.edges import FINE_GROUPS, PAPER_FLOWS, edge_groups, paper_edge_masks
    from anchor_flow.analysis.findings.heads import anchor_heads_frame
    from anchor_flow.analysis.flows import InformationFlow
    from anchor_flow.analysis.heads import (
        HeadBlockingResult,
        HeadFlows,
        run_head_blocking,
        run_head_flows,
    )
    from anchor_flow.analysis.isolation import IsolationResult, run_isolation
    from anchor_flow.analysis.loyalty import label_loyalty, word_loyalty
    from anchor_flow.analysis.saliency.hooks import label_logits, saliency_hooks
    from anchor_flow.analysis.saliency.measure import run_saliency
    from anchor_flow.analysis.saliency.result import SaliencyResult
    from anchor_flow.applications.compression.baselines import CompressionResult, run_compression
    from anchor_flow.applications.compression.cache import (
        CompressedContext,
        compress_context,
        compressed_final_logits,
        compressed_logits,
    )
    from anchor_flow.applications.compression.engines import (
        CompressionError,
        run_compressed_icl,
        run_compressed_icl_trials,
    )
    from anchor_flow.applications.compression.positions import anchor_positions, context_end
    from anchor_flow.applications.compression.speed import measure_speedup, measure_token_speedup
    from anchor_flow.applications.compression.speedup_result import SpeedupResult, flop_ideal_ratio
    from anchor_flow.applications.diagnosis.distances import DiagnosisResult, run_diagnosis
    from anchor_flow.applications.reweighting.beta import AnchorReweighting, fit_reweighting
    from anchor_flow.applications.reweighting.protocol import (
        ReweightingResult,
        reweighting_prompts,
        run_reweighting,
    )
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
    from anchor_flow.icl.context import fit_to_context
    from anchor_flow.icl.data import TaskData, load_task_data, read_examples, save_task_data
    from anchor_flow.icl.evaluation import ICLResult, run_icl
    from anchor_flow.icl.prompts import (
        Example,
        ICLPrompt,
        Template,
        load_prompts,
        save_prompts,
        tokenize_prompts,
    )
    from anchor_flow.icl.roles import PromptBatch, Role
    from anchor_flow.icl.sampling import (
        PAPER_SEEDS,
        SamplingError,
        build_prompts,
        per_example_demonstrations,
        sample_demonstrations,
        sample_test,
        task_prompts,
    )
    from anchor_flow.icl.tasks import (
        Task,
        TaskError,
        get_task,
        load_task_file,
        register_task,
        task_names,
    )
    from anchor_flow.models.loading import from_hf_model, load_model
    from anchor_flow.report.compare import (
        RunComparison,
        compare_runs,
        plot_compare_auc,
        plot_compare_flows,
        plot_compare_heads,
        plot_compare_isolation,
        write_comparison,
    )
    from anchor_flow.report.figures.analysis import plot_deep, plot_flows_with_auc, plot_isolation
    from anchor_flow.report.figures.applications import (
        plot_betas,
        plot_confusion,
        plot_confusion_correlation,
        plot_reweighting_accuracy,
    )
    from anchor_flow.report.figures.compression import plot_compression, plot_speedup
    from anchor_flow.report.figures.heads import plot_head_blocking, plot_head_shares
    from anchor_flow.report.figures.saliency import (
        plot_flows,
        plot_group_matrix,
        plot_saliency_heatmap,
    )
    from anchor_flow.report.folder import render_results_folder
    from anchor_flow.report.html import ReportSection, write_report
    from anchor_flow.results.record import load_run
    from anchor_flow.run.config import EXPERIMENTS, RunConfig
    from anchor_flow.run.pipeline import run_experiments
    from anchor_flow.testbeds.synthetic import bag_of_words_accuracy, synthetic_prompts
    from anchor_flow.testbeds.toy import toy_prompts
except KeyboardInterrupt:
    _interrupted_during_start_up()
    raise

__all__ = [
    "EXPERIMENTS",
    "FINE_GROUPS",
    "PAPER_FLOWS",
    "PAPER_SEEDS",
    "AnchorFlowError",
    "AnchorReweighting",
    "BlockingError",
    "CompressedContext",
    "CompressionError",
    "CompressionResult",
    "ContextLengthError",
    "DeadAttentionHooksError",
    "DeepResult",
    "DiagnosisResult",
    "Example",
    "HeadBlockingResult",
    "HeadFlows",
    "ICLPrompt",
    "ICLResult",
    "InformationFlow",
    "IsolationResult",
    "LabelWordError",
    "ModelLoadError",
    "PromptBatch",
    "PromptError",
    "ReportSection",
    "ResultsError",
    "ReweightingResult",
    "Role",
    "RunComparison",
    "RunConfig",
    "SaliencyResult",
    "SamplingError",
    "SpeedupResult",
    "Task",
    "TaskData",
    "TaskError",
    "Template",
    "UnsupportedModelError",
    "__version__",
    "anchor_heads_frame",
    "anchor_positions",
    "bag_of_words_accuracy",
    "block_edges_hooks",
    "blocking_hooks",
    "build_prompts",
    "compare_runs",
    "compress_context",
    "compressed_final_logits",
    "compressed_logits",
    "context_end",
    "edge_groups",
    "fit_reweighting",
    "fit_to_context",
    "flop_ideal_ratio",
    "from_hf_model",
    "get_task",
    "head_mask",
    "isolation_hooks",
    "isolation_mask",
    "label_logits",
    "label_loyalty",
    "load_model",
    "load_prompts",
    "load_run",
    "load_task_data",
    "load_task_file",
    "measure_speedup",
    "measure_token_speedup",
    "paper_edge_masks",
    "per_example_demonstrations",
    "plot_betas",
    "plot_compare_auc",
    "plot_compare_flows",
    "plot_compare_heads",
    "plot_compare_isolation",
    "plot_compression",
    "plot_confusion",
    "plot_confusion_correlation",
    "plot_deep",
    "plot_flows",
    "plot_flows_with_auc",
    "plot_group_matrix",
    "plot_head_blocking",
    "plot_head_shares",
    "plot_isolation",
    "plot_reweighting_accuracy",
    "plot_saliency_heatmap",
    "plot_speedup",
    "random_rows",
    "read_examples",
    "register_task",
    "render_results_folder",
    "reweighting_prompts",
    "role_pair_mask",
    "run_compressed_icl",
    "run_compressed_icl_trials",
    "run_compression",
    "run_deep",
    "run_diagnosis",
    "run_experiments",
    "run_head_blocking",
    "run_head_flows",
    "run_icl",
    "run_isolation",
    "run_reweighting",
    "run_saliency",
    "saliency_hooks",
    "sample_demonstrations",
    "sample_test",
    "save_prompts",
    "save_task_data",
    "synthetic_prompts",
    "task_names",
    "task_prompts",
    "tokenize_prompts",
    "toy_prompts",
    "word_loyalty",
    "write_comparison",
    "write_report",
]
