"""The run's CPU thread policy (``anchor_flow.run.threads``): one thread for small models."""

from __future__ import annotations

import pytest
import torch

from anchor_flow.run.threads import SMALL_MODEL_PARAMETERS, thread_policy


class _Big(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(SMALL_MODEL_PARAMETERS, device="meta"))


@pytest.fixture
def two_threads(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("ANCHOR_FLOW_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_small_model_runs_on_one_thread_and_the_count_is_restored(two_threads) -> None:
    with thread_policy(torch.nn.Linear(4, 4)) as threads:
        assert threads == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_restored_after_an_exception(two_threads) -> None:
    with pytest.raises(RuntimeError), thread_policy(torch.nn.Linear(4, 4)):
        raise RuntimeError
    assert torch.get_num_threads() == 2


def test_large_models_and_the_users_choice_are_left_alone(two_threads, monkeypatch) -> None:
    with thread_policy(_Big()) as threads:
        assert threads == torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with thread_policy(torch.nn.Linear(4, 4)):
        assert torch.get_num_threads() == 2
