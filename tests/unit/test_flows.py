"""InformationFlow aggregation, intervals, serialisation and errors (no model)."""

from __future__ import annotations

import json

import pytest
import torch

from anchor_flow.analysis.edges import FINE_GROUPS, fine_group_flow
from anchor_flow.analysis.flows import InformationFlow, flows_from_groups
from anchor_flow.errors import AnchorFlowError, ResultsError
from anchor_flow.results.stats import bootstrap_interval


def test_flows_from_groups_is_sum_over_member_groups_divided_by_their_edge_count():
    generator = torch.Generator().manual_seed(0)
    sums = torch.rand(3, 2, len(FINE_GROUPS), generator=generator, dtype=torch.float64)
    counts = torch.randint(1, 9, (3, len(FINE_GROUPS)), generator=generator).double()
    values = flows_from_groups(sums, counts)
    membership = fine_group_flow()
    for f, name in enumerate(("S_wp", "S_pq", "S_ww")):
        # Brute-force loop as the oracle.
        for prompt in range(3):
            for layer in range(2):
                total = sum(
                    float(sums[prompt, layer, g]) for g, m in enumerate(membership) if m == name
                )
                n = sum(float(counts[prompt, g]) for g, m in enumerate(membership) if m == name)
                assert values[prompt, f, layer].item() == pytest.approx(total / n)


def test_normalised_is_the_per_layer_share_of_the_mean_flows():
    values = torch.tensor(
        [[[1.0, 2.0], [3.0, 2.0], [4.0, 4.0]], [[3.0, 2.0], [1.0, 2.0], [4.0, 0.0]]]
    )
    flow = InformationFlow(values)
    assert torch.allclose(flow.mean(), torch.tensor([[2.0, 2.0], [2.0, 2.0], [4.0, 2.0]]).double())
    expected = torch.tensor([[0.25, 1 / 3], [0.25, 1 / 3], [0.5, 1 / 3]]).double()
    assert torch.allclose(flow.normalised(), expected)


def test_interval_contains_the_mean_and_narrows_with_more_prompts():
    generator = torch.Generator().manual_seed(1)
    small = InformationFlow(torch.rand(10, 3, 4, generator=generator))
    large = InformationFlow(torch.rand(400, 3, 4, generator=generator))
    for flow in (small, large):
        low, high = flow.interval()
        assert bool((low <= flow.mean()).all() and (flow.mean() <= high).all())
    width = lambda f: (f.interval()[1] - f.interval()[0]).mean()  # noqa: E731
    assert width(large) < width(small)


def test_interval_is_reproducible_and_seeded():
    flow = InformationFlow(torch.rand(20, 3, 2))
    assert torch.equal(flow.interval(seed=3)[0], flow.interval(seed=3)[0])
    assert not torch.equal(flow.interval(seed=3)[0], flow.interval(seed=4)[0])


def test_prompts_without_a_flow_are_skipped_not_zeroed():
    values = torch.tensor([[[1.0], [2.0], [3.0]], [[float("nan")], [4.0], [5.0]]])
    assert InformationFlow(values).mean()[0, 0].item() == 1.0


def test_to_frame_long_form(tmp_path):
    flow = InformationFlow(torch.rand(5, 3, 4), {"model": "m"})
    frame = flow.to_frame()
    assert len(frame) == 12
    assert set(frame["flow"]) == {"S_wp", "S_pq", "S_ww"}
    s_pq = frame[frame.flow == "S_pq"].sort_values("layer")["normalised"].to_numpy()
    assert s_pq == pytest.approx(flow.normalised()[1].numpy())


def test_save_load_round_trip_and_atomicity(tmp_path):
    flow = InformationFlow(torch.rand(4, 3, 2), {"loss": "gold"})
    path = tmp_path / "saliency.json"
    flow.save(path)
    assert not list(tmp_path.glob("*.tmp"))
    loaded = InformationFlow.load(path)
    assert torch.equal(loaded.values, flow.values)
    assert loaded.settings == {"loss": "gold"}
    summary = json.loads(path.read_text())
    assert sorted(summary["layers"][0]) == sorted(
        ["layer", "S_wp", "S_pq", "S_ww", "S_wp_normalised", "S_pq_normalised", "S_ww_normalised"]
    )


def test_concat_pools_prompts():
    a, b = InformationFlow(torch.rand(2, 3, 4)), InformationFlow(torch.rand(3, 3, 4))
    assert InformationFlow.concat([a, b]).n_prompts == 5


def test_errors_name_the_input(tmp_path):
    with pytest.raises(AnchorFlowError, match=r"shape \(2, 4, 3\); expected \[prompt, 3, layer\]"):
        InformationFlow(torch.rand(2, 4, 3))
    with pytest.raises(AnchorFlowError, match="at least one prompt; got 0"):
        InformationFlow(torch.rand(0, 3, 3))
    with pytest.raises(AnchorFlowError, match="different layer counts"):
        InformationFlow.concat(
            [InformationFlow(torch.rand(1, 3, 2)), InformationFlow(torch.rand(1, 3, 3))]
        )
    with pytest.raises(AnchorFlowError, match="empty list"):
        InformationFlow.concat([])
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"schema": "something/9"}))
    with pytest.raises(ResultsError, match="schema 'something/9'"):
        InformationFlow.load(bad)
    with pytest.raises(ResultsError, match="cannot read"):
        InformationFlow.load(tmp_path / "missing.json")


def test_bootstrap_interval_errors_and_single_row():
    with pytest.raises(AnchorFlowError, match=r"level=1\.5"):
        bootstrap_interval(torch.rand(3, 2), level=1.5)
    with pytest.raises(AnchorFlowError, match="0 rows"):
        bootstrap_interval(torch.rand(0, 2))
    low, high = bootstrap_interval(torch.tensor([[2.0]]))
    assert low.item() == high.item() == 2.0


# Seed A: two prompts with mean flows [2, 1, 1] -> shares [0.5, 0.25, 0.25];
# seed B: one prompt [1, 2, 1] -> shares [0.25, 0.5, 0.25]. One layer.
SEED_A = torch.tensor([[[1.0], [1.0], [2.0]], [[3.0], [1.0], [0.0]]])
SEED_B = torch.tensor([[[1.0], [2.0], [1.0]]])


def test_per_seed_aggregation_is_the_papers_normalise_then_average():
    flow = InformationFlow.concat(
        [InformationFlow(SEED_A), InformationFlow(SEED_B)], aggregation="per_seed"
    )
    # By hand: mean of [0.5, 0.25, 0.25] and [0.25, 0.5, 0.25].
    assert flow.normalised()[:, 0].tolist() == pytest.approx([0.375, 0.375, 0.25])
    assert flow.mean()[:, 0].tolist() == pytest.approx([1.5, 1.5, 1.0])


def test_pooled_aggregation_pools_the_prompts_first():
    flow = InformationFlow.concat(
        [InformationFlow(SEED_A), InformationFlow(SEED_B)], aggregation="pooled"
    )
    assert flow.aggregation == "pooled"
    # By hand: pooled means [5/3, 4/3, 1], sum 4.
    assert flow.normalised()[:, 0].tolist() == pytest.approx([5 / 12, 4 / 12, 3 / 12])


def test_seed_aggregation_is_written_and_read_back(tmp_path):
    runs = [InformationFlow(torch.rand(4, 3, 2)), InformationFlow(torch.rand(6, 3, 2))]
    flow = InformationFlow.concat(runs, aggregation="per_seed")
    frame = flow.to_frame()
    assert set(frame["seed_aggregation"]) == {"per_seed"}
    assert set(frame["n_seeds"]) == {2}
    assert frame[frame.flow == "S_wp"]["normalised"].to_numpy() == pytest.approx(
        ((runs[0].normalised() + runs[1].normalised()) / 2)[0].numpy()
    )
    flow.save(tmp_path / "saliency.json")
    loaded = InformationFlow.load(tmp_path / "saliency.json")
    assert loaded.aggregation == "per_seed"
    assert torch.equal(loaded.normalised(), flow.normalised())
    assert json.loads((tmp_path / "saliency.json").read_text())["seed_aggregation"] == "per_seed"


def test_per_seed_interval_resamples_within_seeds_and_holds_the_estimate():
    generator = torch.Generator().manual_seed(2)
    runs = [InformationFlow(torch.rand(30, 3, 2, generator=generator)) for _ in range(3)]
    flow = InformationFlow.concat(runs, aggregation="per_seed")
    low, high = flow.interval(normalised=True)
    assert bool((low <= flow.normalised()).all() and (flow.normalised() <= high).all())
    assert torch.equal(low, flow.interval(normalised=True)[0])  # seeded


def test_unknown_seed_aggregation_in_a_file_is_refused(tmp_path):
    path = tmp_path / "saliency.json"
    InformationFlow(SEED_B).save(path)
    path.write_text(path.read_text().replace('"per_seed"', '"mean"'))
    with pytest.raises(ResultsError, match="seed_aggregation='mean'; expected one of per_seed"):
        InformationFlow.load(path)
