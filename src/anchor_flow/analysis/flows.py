"""The paper's information-flow metrics S_wp, S_pq, S_ww (§2.1, Eq. 2–4) and their aggregation.

:class:`InformationFlow` holds, per prompt and layer, the mean saliency per edge of each flow
(Eq. 2–4: a sum over the edge set divided by its size). Aggregation follows the official
analysis: the mean over prompts, then the per-layer *relative* normalisation (the three
means divided by their sum, what Fig. 3 plots), with percentile-bootstrap intervals over
prompts. Flows from several seeds combine with :meth:`InformationFlow.concat` in one of two
orders (``aggregation``): ``"per_seed"``, the official notebook's (PAPER.md §1.2 step 5: each
seed's mean flows normalised, then the normalised curves averaged over the seeds), or
``"pooled"`` (the prompts of all seeds pooled, then normalised once).

This module does not run models (see :mod:`anchor_flow.analysis.saliency`) and does not plot
(see :mod:`anchor_flow.report.figures.saliency`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.analysis.edges import PAPER_FLOWS, fine_group_flow
from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.results.stats import bootstrap_interval

__all__ = ["InformationFlow", "flows_from_groups"]

SCHEMA = "anchor_flow.information_flow/1"
AGGREGATIONS = ("per_seed", "pooled")
_N_RESAMPLES = 1000
Aggregation = Literal["per_seed", "pooled"]


def _normalise(means: Float[Tensor, "flow layer"]) -> Float[Tensor, "flow layer"]:
    return means / means.sum(0, keepdim=True)


def _run_means(
    values: Float[Tensor, "prompt flow layer"], runs: Int[Tensor, " prompt"] | None
) -> Float[Tensor, "run flow layer"]:
    if runs is None:
        return values.nanmean(0, keepdim=True)
    return torch.stack([values[runs == r].nanmean(0) for r in runs.unique()])


def _statistic(
    values: Float[Tensor, "prompt flow layer"],
    runs: Int[Tensor, " prompt"] | None,
    aggregation: str,
    normalised: bool,
) -> Float[Tensor, "flow layer"]:
    """Pooled: normalise the mean over all prompts. Per seed: normalise each run's mean,
    then average the runs (a run where a flow is undefined is skipped for that flow)."""
    if aggregation == "pooled" or runs is None:
        means = values.nanmean(0)
        return _normalise(means) if normalised else means
    per_run = _run_means(values, runs)  # [run, flow, layer]
    if normalised:
        per_run = per_run / per_run.sum(1, keepdim=True)
    return per_run.nanmean(0)


def flows_from_groups(
    group_sums: Float[Tensor, "prompt layer group"],
    group_counts: Float[Tensor, "prompt group"],
) -> Float[Tensor, "prompt flow layer"]:
    """Per-edge mean of each paper flow from sums and edge counts of the fine groups.

    A flow with no edges in a prompt (e.g. no label word) is NaN for that prompt.
    """
    flow_of_group = fine_group_flow()
    out = []
    for flow in PAPER_FLOWS:
        member = torch.tensor([f == flow for f in flow_of_group])
        total = group_sums[:, :, member].sum(-1)
        count = group_counts[:, member].sum(-1)
        out.append(total / count[:, None])
    return torch.stack(out, dim=1)


@dataclass(frozen=True)
class InformationFlow:
    """S_wp, S_pq, S_ww per prompt and layer, with paper-style aggregation.

    Example:
        >>> flow = InformationFlow(values=torch.rand(5, 3, 4))
        >>> flow.normalised().sum(0).round(decimals=6).tolist()  # the three flows sum to 1
        [1.0, 1.0, 1.0, 1.0]

    Attributes:
        values: ``[prompt, flow, layer]`` per-edge mean saliency, flows in ``PAPER_FLOWS``
            order (S_wp, S_pq, S_ww).
        settings: how the values were computed (JSON-safe).
        run_index: the run (seed) each prompt came from, 0..R-1 (:meth:`concat` sets it);
            ``None``: one run.
        aggregation: how runs combine in :meth:`mean`, :meth:`normalised` and
            :meth:`interval`: ``"per_seed"`` (the paper's: normalise each run's mean flows,
            then average over runs; the default, as ``RunConfig`` and the CLI) or ``"pooled"``
            (pool every prompt, then normalise). With one run both are the same.
    """

    values: Float[Tensor, "prompt flow layer"]
    settings: dict[str, Any] = field(default_factory=dict)
    run_index: Int[Tensor, " prompt"] | None = None
    aggregation: Aggregation = "per_seed"

    def __post_init__(self) -> None:
        if self.values.ndim != 3 or self.values.shape[1] != len(PAPER_FLOWS):
            raise AnchorFlowError(
                f"values has shape {tuple(self.values.shape)}; expected [prompt, 3, layer]"
            )
        if self.values.shape[0] == 0:
            raise AnchorFlowError("an InformationFlow needs at least one prompt; got 0")
        object.__setattr__(self, "values", self.values.detach().to("cpu", torch.float64))
        if self.aggregation not in AGGREGATIONS:
            raise AnchorFlowError(
                f"aggregation={self.aggregation!r}; expected one of {', '.join(AGGREGATIONS)}"
            )
        if self.run_index is not None:
            runs = torch.as_tensor(self.run_index).detach().to("cpu", torch.long)
            if runs.shape != (self.values.shape[0],):
                raise AnchorFlowError(
                    f"run_index has shape {tuple(runs.shape)}; expected one run per prompt "
                    f"({self.values.shape[0]},)"
                )
            object.__setattr__(self, "run_index", runs)

    @property
    def n_runs(self) -> int:
        return 1 if self.run_index is None else int(self.run_index.unique().numel())

    def run_means(self) -> Float[Tensor, "run flow layer"]:
        """Each run's mean flows (prompts where a flow is undefined skipped)."""
        return _run_means(self.values, self.run_index)

    @property
    def n_prompts(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.values.shape[2])

    def mean(self) -> Float[Tensor, "flow layer"]:
        """Mean over prompts (prompts where a flow is undefined are skipped for that flow);
        with ``aggregation="per_seed"`` the mean of the runs' means."""
        return _statistic(self.values, self.run_index, self.aggregation, normalised=False)

    def normalised(self) -> Float[Tensor, "flow layer"]:
        """The paper's relative sizes: the mean flows divided by their sum, per layer; with
        ``aggregation="per_seed"`` each run's shares, averaged over runs (the paper's order).
        """
        return _statistic(self.values, self.run_index, self.aggregation, normalised=True)

    def interval(
        self, *, normalised: bool = False, level: float = 0.95, seed: int = 0
    ) -> tuple[Float[Tensor, "flow layer"], Float[Tensor, "flow layer"]]:
        """Bootstrap interval over prompts of :meth:`mean` or :meth:`normalised`; with
        ``aggregation="per_seed"`` prompts are resampled within each run (stratified)."""
        if self.aggregation == "pooled" or self.run_index is None:
            return bootstrap_interval(
                self.values, lambda v: _statistic(v, None, "pooled", normalised),
                level=level, seed=seed,
            )  # fmt: skip
        if not 0.0 < level < 1.0:
            raise AnchorFlowError(f"level={level!r}: expected a coverage strictly between 0 and 1")
        runs = self.run_index
        blocks = [torch.nonzero(runs == r).flatten() for r in runs.unique()]
        generator = torch.Generator().manual_seed(seed)
        samples = []
        for _ in range(_N_RESAMPLES):
            rows = torch.cat(
                [b[torch.randint(0, len(b), (len(b),), generator=generator)] for b in blocks]
            )
            samples.append(_statistic(self.values[rows], runs[rows], "per_seed", normalised))
        alpha = (1.0 - level) / 2.0
        quantiles = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)
        low, high = torch.nanquantile(torch.stack(samples), quantiles, dim=0)
        return low, high

    @classmethod
    def concat(
        cls, flows: list[InformationFlow], *, aggregation: Aggregation = "per_seed"
    ) -> InformationFlow:
        """The prompts of several runs (e.g. seeds) of the same model, each prompt labelled
        with its run; ``aggregation="per_seed"`` (the default, as ``RunConfig`` and the CLI) is
        the official notebook's order (PAPER.md §1.2 step 5), ``"pooled"`` pools the prompts
        before normalising.

        Example:
            >>> a, b = InformationFlow(torch.rand(4, 3, 2)), InformationFlow(torch.rand(6, 3, 2))
            >>> InformationFlow.concat([a, b], aggregation="per_seed").n_runs
            2
        """
        if not flows:
            raise AnchorFlowError("concat needs at least one InformationFlow; got an empty list")
        layers = {f.n_layers for f in flows}
        if len(layers) != 1:
            raise AnchorFlowError(f"cannot concat flows with different layer counts {layers}")
        runs = torch.cat([torch.full((f.n_prompts,), i) for i, f in enumerate(flows)])
        return cls(torch.cat([f.values for f in flows]), dict(flows[0].settings), runs, aggregation)

    def to_frame(self, *, level: float = 0.95) -> pd.DataFrame:
        """Long form: one row per (layer, flow) with raw and normalised means and intervals."""
        mean, norm = self.mean(), self.normalised()
        low, high = self.interval(level=level)
        norm_low, norm_high = self.interval(normalised=True, level=level)
        rows = [
            {
                "layer": layer,
                "flow": name,
                "mean": float(mean[f, layer]),
                "ci_low": float(low[f, layer]),
                "ci_high": float(high[f, layer]),
                "normalised": float(norm[f, layer]),
                "normalised_ci_low": float(norm_low[f, layer]),
                "normalised_ci_high": float(norm_high[f, layer]),
                "n_prompts": self.n_prompts,
                "n_seeds": self.n_runs,
                "seed_aggregation": self.aggregation,
            }
            for layer in range(self.n_layers)
            for f, name in enumerate(PAPER_FLOWS)
        ]
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        """JSON-safe per-layer summary (what ``saliency.json`` stores)."""
        mean, norm = self.mean(), self.normalised()
        return {
            "schema": SCHEMA,
            "n_prompts": self.n_prompts,
            "n_layers": self.n_layers,
            "n_seeds": self.n_runs,
            "seed_aggregation": self.aggregation,
            "settings": self.settings,
            "layers": [
                {
                    "layer": layer,
                    **{name: float(mean[f, layer]) for f, name in enumerate(PAPER_FLOWS)},
                    **{
                        f"{name}_normalised": float(norm[f, layer])
                        for f, name in enumerate(PAPER_FLOWS)
                    },
                }
                for layer in range(self.n_layers)
            ],
            "per_prompt": self.values.tolist(),
            "run_index": None if self.run_index is None else self.run_index.tolist(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically (a temporary file renamed into place)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.summary(), indent=1, allow_nan=True))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InformationFlow:
        """Read a file written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ResultsError(
                f"cannot read information flow from {str(path)!r}: {error}"
            ) from error
        if data.get("schema") != SCHEMA:
            raise ResultsError(
                f"{str(path)!r} has schema {data.get('schema')!r}; expected {SCHEMA!r}"
            )
        runs, aggregation = data.get("run_index"), data.get("seed_aggregation", "pooled")
        if aggregation not in AGGREGATIONS:
            raise ResultsError(
                f"{str(path)!r} has seed_aggregation={aggregation!r}; expected one of "
                f"{', '.join(AGGREGATIONS)}"
            )
        return cls(
            torch.tensor(data["per_prompt"], dtype=torch.float64),
            data["settings"],
            None if runs is None else torch.tensor(runs, dtype=torch.long),
            aggregation,
        )
