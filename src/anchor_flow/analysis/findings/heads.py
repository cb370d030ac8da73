"""The anchor heads' finding (issue 24): claim H1, the head-level analogue of C3.

* **Margins of a head** (:func:`anchor_heads_frame`): a head *clears the margin* when its
  share of its layer's flow is, with 95% confidence, above an even split (``ci_low > 1 /
  n_heads``) *and* its saliency per edge of the flow is, against its saliency per edge over all
  its edges, a ratio that "holds" in the vocabulary of
  :func:`~anchor_flow.analysis.findings.verdicts.verdict` (interval above 1, estimate at least
  ``MARGINS["ratio"]`` = 1.25). The second condition keeps a head that holds all of a layer's
  1e-26 of text -> label saliency from counting.
* **H1** (:func:`causal_heads`): blocking the label-word flow in the chosen heads (text -> label
  in the gathering heads, target -> label in the reading heads) lowers label loyalty more than
  blocking it in as many random heads of the same layers. Statistic: the paired difference in
  label loyalty (random heads minus anchor heads), bootstrap over prompts, ``"difference"``
  margin 0.05. Control value: the random heads' loyalty drop (``1 - loyalty``).

Pure: computed from :class:`~anchor_flow.analysis.heads.HeadFlows` and
:class:`~anchor_flow.analysis.heads.HeadBlockingResult`; runs no model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from anchor_flow.analysis.findings.verdicts import (
    Finding,
    json_safe,
    sentence,
    verdict,
    verdict_reason,
)
from anchor_flow.analysis.heads.causal import ARMS, HeadBlockingResult
from anchor_flow.analysis.heads.flows import HeadFlows
from anchor_flow.results.stats import bootstrap_interval

__all__ = ["HEAD_CLAIM", "anchor_heads_frame", "causal_heads"]

HEAD_CLAIM = "H1"


def anchor_heads_frame(
    flows: HeadFlows, kind: str, layers: Sequence[int] | None = None
) -> pd.DataFrame:
    """:meth:`HeadFlows.ranking` with ``clears_margin`` (see the module docstring).

    Example:
        >>> anchor_heads_frame(flows, "gathering", [0]).query("clears_margin")  # doctest: +SKIP
    """
    frame = flows.ranking(kind, layers)
    even = 1.0 / flows.n_heads
    enriched = [
        verdict(v, lo, hi, "ratio") == "holds"
        for v, lo, hi in zip(frame["enrichment"], frame["enrichment_ci_low"],
                             frame["enrichment_ci_high"], strict=True)
    ]  # fmt: skip
    frame["clears_margin"] = (frame["ci_low"] > even) & pd.Series(enriched, index=frame.index)
    return frame


def causal_heads(
    result: HeadBlockingResult,
    *,
    subject: str = "model",
    margins: dict[str, bool] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> Finding:
    """H1 from a head-blocking result: anchor heads vs as many random heads (paired).

    Args:
        result: the causal check (:func:`~anchor_flow.analysis.heads.run_head_blocking`).
        subject: ``"model"`` or ``"null model"``.
        margins: optional ``{"gathering": bool, "reading": bool}``, whether some chosen head of
            each kind clears its margin (:func:`anchor_heads_frame`); recorded in the details
            and the sentence, the verdict is the causal one.
        n_resamples, seed: the bootstrap's.
    """
    loyalty = result.per_prompt("label_loyalty")
    anchor, random = loyalty[ARMS.index("anchor_heads")], loyalty[ARMS.index("random_heads")]
    difference = (random - anchor)[:, None]
    point, low, high = float(difference.mean()), math.nan, math.nan
    if difference.shape[0] >= 2:
        lo, hi = bootstrap_interval(difference, lambda v: v.mean(0),
                                    n_resamples=n_resamples, seed=seed)  # fmt: skip
        low, high = float(lo[0]), float(hi[0])
    outcome, reason = verdict_reason(point, low, high, "difference", int(difference.shape[0]))
    heads = (f"gathering heads {list(result.gathering_heads)} and reading heads "
             f"{list(result.reading_heads)}")  # fmt: skip
    what = (f"blocking the label-word flow in the {heads} lowers label loyalty to "
            f"{float(anchor.mean()):.3f}, {point:+.3f} [{low:+.3f}, {high:+.3f}] below as many "
            f"random heads of the same layers ({float(random.mean()):.3f})")  # fmt: skip
    if margins is not None:
        cleared = [kind for kind, ok in margins.items() if ok]
        what += (f"; heads clearing the share margin: {', '.join(cleared)}" if cleared
                 else "; no chosen head clears the share margin")  # fmt: skip
    details = {"gathering_heads": [list(h) for h in result.gathering_heads],
               "reading_heads": [list(h) for h in result.reading_heads],
               "loyalty_anchor_heads": float(anchor.mean()),
               "loyalty_random_heads": float(random.mean()),
               "accuracy_anchor_heads": float(result.per_prompt("accuracy")[0].nanmean()),
               "accuracy_random_heads": float(result.per_prompt("accuracy")[1].nanmean()),
               "margins": margins}  # fmt: skip
    layers = sorted({layer for layer, _ in (*result.gathering_heads, *result.reading_heads)})
    return Finding(HEAD_CLAIM, subject, outcome,
                   "extra loyalty drop of blocking the anchor heads over random heads (paired)",
                   point, low, high, 0.0, "as many random heads of the same layers: loyalty drop",
                   1.0 - float(random.mean()), sentence(HEAD_CLAIM, outcome, what),
                   int(difference.shape[0]), tuple(layers), json_safe(details),
                   reason=reason)  # fmt: skip
