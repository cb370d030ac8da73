"""The result of a saliency run (paper §2.1): per-layer saliency reduced to fine edge groups.

Frozen, CPU-only, with ``flows()`` (the paper's S_wp/S_pq/S_ww), ``group_means()`` (the
finer role-to-role matrix), ``to_frame()`` and ``save()``/``load()``. Computing it is
:func:`anchor_flow.analysis.saliency.measure.run_saliency`'s job.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from anchor_flow.analysis.edges import FINE_GROUPS, fine_group_flow
from anchor_flow.analysis.flows import InformationFlow, flows_from_groups
from anchor_flow.errors import AnchorFlowError, ResultsError

__all__ = ["SaliencyResult"]

SCHEMA = "anchor_flow.saliency/1"
OPTIONAL = ("maps", "head_maps", "text_row_sums", "head_sums", "head_abs_sums")


@dataclass(frozen=True)
class SaliencyResult:
    """Saliency of a set of prompts, reduced to fine edge groups per layer.

    Attributes:
        group_sums: ``[prompt, layer, group]`` sum of ``I_l`` over each fine edge group
            (names in :data:`anchor_flow.analysis.edges.FINE_GROUPS`).
        group_counts: ``[prompt, group]`` number of edges in each group.
        label_probs: ``[prompt, n_classes]`` the model's label-restricted probabilities.
        gold: ``[prompt]`` query labels (-1 when unknown).
        roles: ``[prompt, pos]`` token roles (:class:`anchor_flow.icl.prompts.Role`), right-padded.
        str_tokens: the prompts' tokens as strings, unpadded.
        settings: how the saliency was computed (JSON-safe).
        maps: ``[prompt, layer, pos, pos]`` saliency maps, if kept.
        head_maps: ``[prompt, layer, head, pos, pos]`` per-head maps, if kept.
        text_row_sums: ``[prompt, layer, pos]`` per reading position, saliency summed over
            its edges from text positions (claim C1's within-row comparison); None in
            results saved before it existed.
        head_sums: ``[prompt, layer, head, group]`` signed per-head sums of ``A_h ⊙ G_h``
            over each fine group (``run_saliency(head_flows=True)``), else None. Summed over
            heads they give the signed layer sum, before Eq. 1's edge-wise absolute value.
        head_abs_sums: the same of ``|A_h ⊙ G_h|``, else None.
    """

    group_sums: Float[Tensor, "prompt layer group"]
    group_counts: Float[Tensor, "prompt group"]
    label_probs: Float[Tensor, "prompt n_classes"]
    gold: Int[Tensor, " prompt"]
    roles: Int[Tensor, "prompt pos"]
    str_tokens: tuple[tuple[str, ...], ...]
    settings: dict[str, Any] = field(default_factory=dict)
    maps: Float[Tensor, "prompt layer pos pos"] | None = None
    head_maps: Float[Tensor, "prompt layer head pos pos"] | None = None
    text_row_sums: Float[Tensor, "prompt layer pos"] | None = None
    head_sums: Float[Tensor, "prompt layer head group"] | None = None
    head_abs_sums: Float[Tensor, "prompt layer head group"] | None = None

    def __post_init__(self) -> None:
        n = self.group_sums.shape[0]
        sizes = {
            "group_counts": self.group_counts.shape[0],
            "label_probs": self.label_probs.shape[0],
            "gold": self.gold.shape[0],
            "roles": self.roles.shape[0],
            "str_tokens": len(self.str_tokens),
        }
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            raise AnchorFlowError(f"group_sums has {n} prompts but {bad}; expected equal sizes")
        if self.group_sums.shape[-1] != len(FINE_GROUPS):
            raise AnchorFlowError(
                f"group_sums has {self.group_sums.shape[-1]} groups; expected {len(FINE_GROUPS)}"
            )

    @property
    def n_prompts(self) -> int:
        return int(self.group_sums.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.group_sums.shape[1])

    @property
    def predictions(self) -> Int[Tensor, " prompt"]:
        return self.label_probs.argmax(-1)

    def accuracy(self) -> float:
        """Share of prompts with a known label whose label-restricted prediction is right."""
        known = self.gold >= 0
        if not bool(known.any()):
            raise AnchorFlowError("accuracy needs query labels; every query label is unknown")
        return float((self.predictions[known] == self.gold[known]).double().mean())

    def flows(self) -> InformationFlow:
        """The paper's S_wp, S_pq, S_ww per prompt and layer (Eq. 2–4)."""
        return InformationFlow(flows_from_groups(self.group_sums, self.group_counts), self.settings)

    def group_means(self) -> Float[Tensor, "layer group"]:
        """Role-to-role flow matrix: mean saliency per edge of each fine group, per layer.

        Per prompt the group's sum is divided by its edge count, then averaged over the
        prompts in which the group has edges (NaN where it never has).
        """
        return SaliencyResult.pooled_group_means([self])

    @staticmethod
    def pooled_group_means(results: Sequence[SaliencyResult]) -> Float[Tensor, "layer group"]:
        """:meth:`group_means` over the prompts of several results (e.g. one per seed).

        Example:
            >>> SaliencyResult.pooled_group_means(per_seed).shape  # doctest: +SKIP
            torch.Size([48, 9])

        Raises:
            AnchorFlowError: no result, or results with different numbers of layers.
        """
        layers = sorted({r.n_layers for r in results})
        if len(layers) != 1:
            raise AnchorFlowError(
                f"pooled_group_means got results with {layers or 'no'} layers; expected at "
                "least one result, all with the same number of layers"
            )
        per_prompt = torch.cat([r.group_sums / r.group_counts[:, None, :] for r in results])
        return per_prompt.nanmean(0)

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (prompt, layer, fine group) with sum, edge count and mean."""
        n_prompts, n_layers, n_groups = self.group_sums.shape
        prompt, layer, group = np.meshgrid(
            np.arange(n_prompts), np.arange(n_layers), np.arange(n_groups), indexing="ij"
        )
        counts = self.group_counts[:, None, :].expand(-1, n_layers, -1)
        flow_of_group = np.array(fine_group_flow())
        frame = pd.DataFrame(
            {
                "prompt": prompt.ravel(),
                "layer": layer.ravel(),
                "group": np.array(FINE_GROUPS)[group.ravel()],
                "flow": flow_of_group[group.ravel()],
                "sum": self.group_sums.numpy().ravel(),
                "n_edges": counts.numpy().ravel(),
            }
        )
        frame["mean"] = frame["sum"] / frame["n_edges"].where(frame["n_edges"] > 0)
        return frame

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``saliency.npz`` and ``saliency_meta.json`` into ``directory`` atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "group_sums": self.group_sums.numpy(),
            "group_counts": self.group_counts.numpy(),
            "label_probs": self.label_probs.numpy(),
            "gold": self.gold.numpy(),
            "roles": self.roles.numpy(),
        }
        if self.maps is not None:
            arrays["maps"] = self.maps.numpy()
        if self.head_maps is not None:
            arrays["head_maps"] = self.head_maps.numpy()
        for name in ("text_row_sums", "head_sums", "head_abs_sums"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name).numpy()
        meta = {
            "schema": SCHEMA,
            "settings": self.settings,
            "str_tokens": [list(t) for t in self.str_tokens],
            "groups": list(FINE_GROUPS),
        }
        tmp = directory / "saliency.npz.tmp"
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, directory / "saliency.npz")
        tmp_meta = directory / "saliency_meta.json.tmp"
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, directory / "saliency_meta.json")

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, maps: bool = True) -> SaliencyResult:
        """Read a result written by :meth:`save`; ``maps=False`` skips the (large) maps."""
        directory = Path(directory)
        skipped = () if maps else ("maps", "head_maps")
        try:
            meta = json.loads((directory / "saliency_meta.json").read_text())
            with np.load(directory / "saliency.npz") as stored:
                arrays = {k: stored[k] for k in stored.files if k not in skipped}
        except (OSError, json.JSONDecodeError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ResultsError(
                f"cannot read a saliency result from {str(directory)!r}: {error}"
            ) from error
        if meta.get("schema") != SCHEMA or meta.get("groups") != list(FINE_GROUPS):
            raise ResultsError(
                f"{str(directory)!r} holds schema {meta.get('schema')!r}; expected {SCHEMA!r} "
                "with this version's edge groups"
            )
        optional = {k: torch.from_numpy(arrays[k]) for k in OPTIONAL if k in arrays}  # fmt: skip
        return cls(
            group_sums=torch.from_numpy(arrays["group_sums"]),
            group_counts=torch.from_numpy(arrays["group_counts"]),
            label_probs=torch.from_numpy(arrays["label_probs"]),
            gold=torch.from_numpy(arrays["gold"]),
            roles=torch.from_numpy(arrays["roles"]),
            str_tokens=tuple(tuple(t) for t in meta["str_tokens"]),
            settings=meta["settings"],
            **optional,
        )
