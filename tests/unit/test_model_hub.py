"""Without the hub, a missing model fails at once with one line: the local cache only (issue 14).

Before, an unknown hub name took 52 s and 44 lines of retry warnings: ``transformers`` tried
the network for every file. The spy records what ``from_pretrained`` is asked to do.
"""

from __future__ import annotations

import pytest

from anchor_flow.errors import ModelLoadError
from anchor_flow.models import hub
from anchor_flow.models.loading import load_model


@pytest.fixture
def spy(monkeypatch):
    import transformers

    calls = []

    def from_pretrained(source, **kwargs):
        calls.append(kwargs)
        raise OSError(f"{source} is not a local folder and is not cached\n(more detail)")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    monkeypatch.setattr(hub, "_PROBED", {})
    return calls


def test_offline_flag_reads_the_cache_only_and_fails_in_one_line(spy, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_model("nobody/no-such-model")
    assert spy == [{"local_files_only": True}]
    assert "\n" not in str(info.value)
    assert str(info.value).endswith("(HF_HUB_OFFLINE is set)")


def test_an_unreachable_hub_reads_the_cache_only(spy, monkeypatch):
    monkeypatch.setattr(hub, "_offline_flag", lambda: False)
    monkeypatch.setattr(hub, "_connect", lambda host, port: f"{host}:{port} cannot be reached")
    with pytest.raises(ModelLoadError, match=r"huggingface\.co:443 cannot be reached\)$"):
        load_model("nobody/no-such-model")
    assert spy == [{"local_files_only": True}]


def test_a_reachable_hub_is_asked_as_before(spy, monkeypatch):
    monkeypatch.setattr(hub, "_offline_flag", lambda: False)
    monkeypatch.setattr(hub, "_connect", lambda host, port: None)
    with pytest.raises(ModelLoadError, match="not reachable"):
        load_model("nobody/no-such-model")
    assert spy == [{}]


def test_the_probe_reports_a_refused_endpoint(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(hub, "_offline_flag", lambda: False)
    monkeypatch.setattr(hub, "_PROBED", {})
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: closed
    reason = hub.hub_unreachable()
    assert reason is not None
    assert reason.startswith("127.0.0.1:9 cannot be reached")
