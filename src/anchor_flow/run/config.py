"""The run's settings: :class:`RunConfig` (frozen, validated; the paper's defaults) and the
experiment names :data:`EXPERIMENTS` of :func:`anchor_flow.run.pipeline.run_experiments`.

Kept apart from the pipeline so that the steps and the CLI read the settings without
importing the code that owns the results folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.sampling import PAPER_SEEDS

__all__ = ["COMPRESSION_METHODS", "EXPERIMENTS", "NOT_IN_RESULTS", "RunConfig"]

EXPERIMENTS = (
    "saliency", "isolation", "deep", "reweighting", "compression", "diagnosis", "heads",
)  # fmt: skip
# Settings a resumed run may change (the record keeps the latest): the results do not depend
# on them beyond float rounding (the compression engines are tested equal). The dtype does.
NOT_IN_RESULTS = ("device", "compression_engine", "device_map", "saliency_memory")
COMPRESSION_METHODS = ("text_anchor", "hidden_random", "hidden_random_top", "hidden_anchor")


@dataclass(frozen=True)
class RunConfig:
    """Settings of a run: the task protocol, the experiments and their options.

    Defaults are the paper's (PAPER.md §0, §7): five seeds, 1000 test examples per seed,
    one demonstration per class, label words isolated in 1/3/5/7 layers (scaled down for
    small models), re-weighting with Adam lr 0.01 for 10 epochs, 20 Hidden_random-top trials,
    diagnosis at 2/3 of the depth with M=10 principal components. ``speed_queries`` test
    examples of the first seed, at 1, 2 and 4 demonstrations per class, time the compressed
    vs the full prompt (Table 3). ``prepend_bos="auto"`` starts prompts with BOS only where
    the checkpoint's own tokenizer does (not GPT-2, as in the paper); ``seed_aggregation``
    ``"per_seed"`` normalises each seed's mean flows, then averages (the paper's notebook).
    The findings (issue 16) call the first and last
    ``claim_layer_fraction`` of the layers shallow and deep, and compare with a re-initialised
    copy of the model (``null_model``: ``"auto"`` = ``"random-init"`` up to 500M parameters).

    Example:
        >>> RunConfig(task="demo-k3", n_examples=50, experiments=("saliency", "deep")).seeds
        (42, 43, 44, 45, 46)
    """

    task: str = "demo-k3"
    seeds: tuple[int, ...] = PAPER_SEEDS
    n_examples: int = 1000
    shots_per_class: int = 1
    fix_class_order: bool = False
    label_token_policy: Literal["single", "first", "all"] | None = None
    prepend_bos: Literal["auto", "yes", "no"] = "auto"
    on_overflow: Literal["error", "skip"] = "error"
    data_dir: str | None = None
    batch_size: int = 8
    experiments: tuple[str, ...] = EXPERIMENTS
    top_k: int = 5
    saliency_loss: Literal["gold", "predicted"] = "gold"
    saliency_gradient: Literal["pattern", "scores"] = "pattern"
    # "recompute": each block re-run in the saliency backward (long contexts); equal results.
    saliency_memory: Literal["keep", "recompute"] = "keep"
    seed_aggregation: Literal["per_seed", "pooled"] = "per_seed"
    isolation_layer_counts: tuple[int, ...] | None = None
    isolation_mode: Literal["renormalise", "zero"] = "renormalise"
    reweighting_epochs: int = 10
    reweighting_lr: float = 0.01
    train_per_class: int = 4
    compression_methods: tuple[str, ...] = COMPRESSION_METHODS
    position_policy: Literal["original", "compact", "restart"] = "original"
    compression_engine: Literal["auto", "cache", "mask", "fast"] = "auto"
    # Recorded, not used by run_experiments (it gets a loaded model): how the CLI placed it.
    device_map: str | dict[str, Any] | None = None
    top_trials: int = 20
    speed_queries: int = 8
    diagnosis_layer: int | None = None
    n_components: int = 10
    null_model: Literal["auto", "random-init", "none"] = "auto"
    claim_layer_fraction: float = 1 / 3

    def __post_init__(self) -> None:
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if unknown or not self.experiments or len(set(self.experiments)) != len(self.experiments):
            raise AnchorFlowError(
                f"experiments={list(self.experiments)!r}; expected distinct names from "
                f"{', '.join(EXPERIMENTS)}"
            )
        if not self.seeds:
            raise AnchorFlowError("seeds=(); expected at least one seed (the paper: 42..46)")
        if len(set(self.seeds)) != len(self.seeds) or not all(0 <= s < 2**32 for s in self.seeds):
            raise AnchorFlowError(
                f"seeds={list(self.seeds)!r}; expected distinct seeds in 0..{2**32 - 1}"
            )
        counts = ("n_examples", "shots_per_class", "batch_size", "top_k", "reweighting_epochs",
                  "train_per_class", "top_trials", "speed_queries", "n_components")  # fmt: skip
        for name in counts:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise AnchorFlowError(f"{name}={value!r}; expected a positive integer")
        for name, kind in get_type_hints(RunConfig).items():
            allowed = _literal_values(kind)
            if allowed and getattr(self, name) not in allowed:
                raise AnchorFlowError(
                    f"{name}={getattr(self, name)!r}; expected one of "
                    f"{', '.join(map(repr, allowed))}"
                )
        if not (
            isinstance(self.claim_layer_fraction, (int, float))
            and 0.0 < self.claim_layer_fraction <= 0.5
        ):
            raise AnchorFlowError(
                f"claim_layer_fraction={self.claim_layer_fraction!r}; expected a share of the "
                "layers in (0, 0.5] (shallow = first, deep = last that share)"
            )
        bad = [m for m in self.compression_methods if m not in COMPRESSION_METHODS]
        if bad or not self.compression_methods:
            raise AnchorFlowError(
                f"compression_methods={list(self.compression_methods)!r}; expected a subset of "
                f"{', '.join(COMPRESSION_METHODS)}"
            )

    def settings(self) -> dict[str, Any]:
        """The JSON-safe settings that define the results (all but the experiment list)."""
        values = asdict(self)
        values.pop("experiments")
        return json.loads(json.dumps(values, default=str))


def _literal_values(kind: Any) -> tuple[Any, ...]:
    """The values a ``Literal[...]`` (or ``Literal[...] | None``) annotation allows, else ()."""
    if get_origin(kind) is Literal:
        return get_args(kind)
    parts = get_args(kind)
    literals = [p for p in parts if get_origin(p) is Literal]
    if len(literals) == 1 and len(parts) == 2 and type(None) in parts:
        return (*get_args(literals[0]), None)
    return ()
