"""The paper's information-flow metrics S_wp, S_pq, S_ww (§2.1, Eq. 2–4) and their aggregation.

:class:`InformationFlow` holds, per prompt and layer, the mean saliency per edge of each flow
(Eq. 2–4: a sum over the edge set divided by its size). Aggregation follows the official
analysis: the mean over prompts, then the per-layer *relative* normalisation (the three
means divided by their sum, what Fig. 3 plots), with percentile-bootstrap intervals over
prompts. Flows from several seeds combine with :meth:`InformationFlow.concat`.

This module does not run models (see :mod:`anchor_flow.analysis.saliency`) and does not plot
(see :mod:`anchor_flow.report.figures.saliency`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from anchor_flow.analysis.edges import PAPER_FLOWS, fine_group_flow
from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.results.stats import bootstrap_interval

__all__ = ["InformationFlow", "flows_from_groups"]

SCHEMA = "anchor_flow.information_flow/1"


def _normalise(means: Float[Tensor, "flow layer"]) -> Float[Tensor, "flow layer"]:
    return means / means.sum(0, keepdim=True)


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
    """

    values: Float[Tensor, "prompt flow layer"]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.ndim != 3 or self.values.shape[1] != len(PAPER_FLOWS):
            raise AnchorFlowError(
                f"values has shape {tuple(self.values.shape)}; expected [prompt, 3, layer]"
            )
        if self.values.shape[0] == 0:
            raise AnchorFlowError("an InformationFlow needs at least one prompt; got 0")
        object.__setattr__(self, "values", self.values.detach().to("cpu", torch.float64))

    @property
    def n_prompts(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.values.shape[2])

    def mean(self) -> Float[Tensor, "flow layer"]:
        """Mean over prompts (prompts where a flow is undefined are skipped for that flow)."""
        return self.values.nanmean(0)

    def normalised(self) -> Float[Tensor, "flow layer"]:
        """The paper's relative sizes: the mean flows divided by their sum, per layer."""
        return _normalise(self.mean())

    def interval(
        self, *, normalised: bool = False, level: float = 0.95, seed: int = 0
    ) -> tuple[Float[Tensor, "flow layer"], Float[Tensor, "flow layer"]]:
        """Bootstrap interval over prompts of :meth:`mean` or :meth:`normalised`."""

        def statistic(values: Tensor) -> Tensor:
            means = values.nanmean(0)
            return _normalise(means) if normalised else means

        return bootstrap_interval(self.values, statistic, level=level, seed=seed)

    @classmethod
    def concat(cls, flows: list[InformationFlow]) -> InformationFlow:
        """Pool the prompts of several runs (e.g. seeds) of the same model."""
        if not flows:
            raise AnchorFlowError("concat needs at least one InformationFlow; got an empty list")
        layers = {f.n_layers for f in flows}
        if len(layers) != 1:
            raise AnchorFlowError(f"cannot concat flows with different layer counts {layers}")
        return cls(torch.cat([f.values for f in flows]), dict(flows[0].settings))

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
        return cls(torch.tensor(data["per_prompt"], dtype=torch.float64), data["settings"])
