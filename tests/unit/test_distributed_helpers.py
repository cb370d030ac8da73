"""The pieces of a data-parallel run that need no process group: parts, joins, failures,
rank 0's commands, the device per rank (issue 17; the launched runs are in
tests/model/test_distributed.py)."""

from __future__ import annotations

import pytest
import torch

from anchor_flow.analysis.deep import DeepResult
from anchor_flow.analysis.edges import FINE_GROUPS
from anchor_flow.analysis.saliency.result import SaliencyResult
from anchor_flow.applications.compression.baselines import CompressionResult
from anchor_flow.applications.compression.outcomes import CompressionOutcomes
from anchor_flow.applications.diagnosis.result import DiagnosisResult
from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.roles import Role
from anchor_flow.run.distributed import (
    DistributedRunError,
    Ranks,
    _Failure,
    rank_device,
    shard_bounds,
    start_ranks,
)
from anchor_flow.run.pipeline import _check_same_inputs
from anchor_flow.run.shards import join_diagnosis, join_saliency


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_parts_are_consecutive_cover_the_list_and_differ_by_one_at_most(world: int) -> None:
    for n in range(13):
        parts = [shard_bounds(n, rank, world) for rank in range(world)]
        assert [i for part in parts for i in part] == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert Ranks(1, 3).shard("abcdefg") == (2, ["c", "d", "e", "f"][:2])
    with pytest.raises(AnchorFlowError, match="rank=2, world_size=2"):
        shard_bounds(4, 2, 2)


def test_one_rank_computes_raises_its_own_error_and_sends_nothing() -> None:
    ranks = Ranks()
    assert not ranks.parallel
    assert ranks.leader
    assert ranks.agree(lambda: 3) == 3
    assert ranks.gather(lambda: 3) == [3]
    assert ranks.everyone("x") == ["x"]
    ranks.send(("step", "deep"))  # no group: nothing to send

    def bad() -> None:
        raise AnchorFlowError("bad input")

    with pytest.raises(AnchorFlowError, match=r"^bad input$"):
        ranks.agree(bad)
    with pytest.raises(AnchorFlowError, match=r"^bad input$"):
        ranks.gather(bad)


def test_a_ranks_failure_is_raised_elsewhere_as_one_line_or_with_its_traceback() -> None:
    try:
        raise AnchorFlowError("prompt   too\nlong")
    except AnchorFlowError as error:
        user = _Failure.of(1, error)
    raised = user.error()
    assert type(raised) is AnchorFlowError
    assert str(raised) == "rank 1: prompt too long"
    assert _Failure.of(0, raised) == user  # passed on by rank 0: still rank 1's
    try:
        raise KeyError("layer")
    except KeyError as error:
        internal = _Failure.of(2, error).error()
    assert isinstance(internal, DistributedRunError)
    assert str(internal) == "rank 2 failed: KeyError: 'layer'"
    assert "Traceback" in internal.trace


class _Scripted(Ranks):
    """A follower whose rank 0 is a list of commands."""

    def __init__(self, commands: list) -> None:
        super().__init__(rank=1, world_size=2)
        object.__setattr__(self, "commands", commands)

    def receive(self) -> tuple:
        return self.commands.pop(0)  # type: ignore[attr-defined, no-any-return]


def test_the_other_ranks_run_what_rank_zero_names_until_done_or_failed() -> None:
    ran: list[str] = []
    done = _Scripted([("step", "isolation"), ("step", "deep"), ("done", {"status": "ok"})])
    assert done.follow(ran.append) == {"status": "ok"}
    assert ran == ["isolation", "deep"]
    failed = _Scripted(
        [("step", "deep"), ("fail", _Failure(0, "ResultsError", "locked", True, ""))]
    )
    with pytest.raises(AnchorFlowError, match=r"^rank 0: locked$"):
        failed.follow(ran.append)


def test_every_rank_must_read_the_same_inputs() -> None:
    same = ({"model": "a", "data": "b"}, {"seeds": [42]})
    _check_same_inputs([same, same])
    other = ({"model": "z", "data": "b"}, {"seeds": [43]})
    with pytest.raises(AnchorFlowError, match=r"rank 1: fingerprint.model, settings.seeds"):
        _check_same_inputs([same, other])


def test_the_device_of_a_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    two = Ranks(1, 2, local_rank=1)
    assert rank_device(None, None, Ranks()) is None  # one process: TransformerLens's choice
    assert rank_device("cpu", None, two) == "cpu"
    assert rank_device("cuda:0", None, two) == "cuda:0"
    assert rank_device(None, "auto", two) is None  # a device map is used as given
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device(None, None, two) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(AnchorFlowError, match="LOCAL_RANK=1 but this machine has 1 CUDA"):
        rank_device("cuda", None, two)


def test_start_ranks_without_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert start_ranks() == Ranks()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(AnchorFlowError, match="WORLD_SIZE='two'"):
        start_ranks()
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(AnchorFlowError, match="start data-parallel runs with torchrun"):
        start_ranks()


def _deep(n: int, offset: int = 0) -> DeepResult:
    values = torch.arange(offset, offset + n, dtype=torch.float64)
    scores = values[:, None, None].expand(n, 3, 2).clone()
    probs, gold = torch.stack([values, -values], -1).softmax(-1), torch.arange(offset, offset + n)
    return DeepResult(scores, probs, gold % 2, torch.zeros(n).long(), ("seed-1",))


def test_join_concatenates_the_parts_of_one_run_and_refuses_per_run_arrays() -> None:
    whole = _deep(7)
    joined = DeepResult.join([_deep(3), _deep(4, offset=3)])
    for name in DeepResult._ARRAYS:
        assert torch.equal(getattr(joined, name), getattr(whole, name))
    assert DeepResult.join([whole]) is whole
    other = DeepResult(**{**vars(_deep(2)), "run_names": ("seed-2",)})
    with pytest.raises(AnchorFlowError, match="parts of the same runs"):
        DeepResult.join([whole, other])
    result = CompressionResult(
        methods=("hidden_anchor",), baseline_predictions=torch.zeros(2).long(),
        predictions=torch.zeros(1, 2).long(), word_jaccard=torch.ones(1, 2),
        gold=torch.zeros(2).long(), run=torch.zeros(2).long(), run_names=("seed-1",),
        trials=torch.zeros(1, 0, 3), chosen_trial=torch.tensor([-1]),
    )  # fmt: skip
    with pytest.raises(AnchorFlowError, match="per-run arrays"):
        CompressionResult.join([result, result])


def _saliency(lengths: list[int], width: int) -> SaliencyResult:
    n = len(lengths)
    roles = torch.full((n, width), int(Role.PAD))
    rows = torch.zeros(n, 2, width)
    for i, length in enumerate(lengths):
        roles[i, :length] = int(Role.TEXT)
        rows[i, :, :length] = float(length)
    return SaliencyResult(
        group_sums=torch.full((n, 2, len(FINE_GROUPS)), float(n)),
        group_counts=torch.ones(n, len(FINE_GROUPS)),
        label_probs=torch.full((n, 2), 0.5), gold=torch.zeros(n).long(), roles=roles,
        str_tokens=tuple(("t",) * length for length in lengths), text_row_sums=rows,
    )  # fmt: skip


def test_join_saliency_repads_roles_and_text_rows_to_the_longest_part() -> None:
    joined = join_saliency([_saliency([3, 2], 3), _saliency([5], 5)])
    whole = _saliency([3, 2, 5], 5)
    assert torch.equal(joined.roles, whole.roles)
    assert torch.equal(joined.text_row_sums, whole.text_row_sums)  # type: ignore[arg-type]
    assert joined.str_tokens == whole.str_tokens
    assert joined.n_prompts == 3
    with pytest.raises(AnchorFlowError, match="no kept maps"):
        join_saliency([])


def _diagnosis(queries: torch.Tensor, keys: torch.Tensor) -> DiagnosisResult:
    n = queries.shape[0]
    return DiagnosisResult(
        queries=queries, keys=keys[None], label_probs=torch.full((n, 2), 0.5),
        gold=torch.arange(n) % 2, run=torch.zeros(n).long(), run_names=("seed-1",),
        layers=(0,), class_names=("a", "b"), settings={"layer": 0, "n_components": 2},
    )  # fmt: skip


def test_join_diagnosis_weights_the_mean_keys_by_the_anchor_counts() -> None:
    queries = torch.randn(5, 1, 4, dtype=torch.float64)
    first, second = torch.ones(1, 2, 4).double(), torch.full((1, 2, 4), 4.0).double()
    counts = [torch.tensor([[2.0, 1.0]]).double(), torch.tensor([[1.0, 3.0]]).double()]
    joined = join_diagnosis(
        [(_diagnosis(queries[:2], first), counts[0]), (_diagnosis(queries[2:], second), counts[1])],
        n_components=2,
    )
    assert torch.allclose(joined.keys[0, 0, :, 0], torch.tensor([6 / 3, 13 / 4]).double())
    assert torch.equal(joined.queries, queries)
    with pytest.raises(AnchorFlowError, match="n_components=6"):
        join_diagnosis([(_diagnosis(queries, first), counts[0])], n_components=6)


def _outcomes(top: list[list[int]], gold: list[int]) -> CompressionOutcomes:
    n, trials = len(gold), torch.tensor(top)
    return CompressionOutcomes(
        methods=("hidden_random_top", "hidden_anchor"), baseline_predictions=torch.tensor(gold),
        predictions=torch.tensor([gold]), word_jaccard=torch.ones(1, n),
        trial_predictions=trials, trial_jaccard=torch.ones(trials.shape),
        gold=torch.tensor(gold), settings={"seed": 1},
    )  # fmt: skip


def test_hidden_random_top_picks_its_trial_over_all_the_joined_prompts() -> None:
    # Trial 0 is perfect on the first part, trial 1 over the whole list.
    parts = [_outcomes([[0, 1], [1, 0]], [0, 1]), _outcomes([[0, 0, 0], [1, 1, 1]], [1, 1, 1])]
    joined = CompressionOutcomes.join(parts)
    result = CompressionResult.from_outcomes(joined, "seed-1")
    assert int(result.chosen_trial[0]) == 1
    assert result.predictions[0].tolist() == [1, 0, 1, 1, 1]
    assert int(CompressionResult.from_outcomes(parts[0], "seed-1").chosen_trial[0]) == 0
    assert result.trials.shape == (1, 2, 3)
