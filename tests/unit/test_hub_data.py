"""The paper's four tasks as the hub serves them to ``datasets`` >= 4, offline (issue 14).

The stand-in hub is a local folder per repository and revision, read by the installed
``datasets`` itself: ``CogComp/trec`` and ``SemEvalWorkshop/emo`` hold only a loading script on
main (which ``datasets`` refuses, as on the hub) and ``<config>/<split>/0000.parquet`` on
``refs/convert/parquet``; GLUE and AG News hold parquet files on main.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from anchor_flow.cli import main
from anchor_flow.icl.data import load_task_data
from anchor_flow.icl.hub import PARQUET_REVISION
from anchor_flow.icl.sampling import task_prompts
from anchor_flow.icl.tasks import TaskError, get_task
from anchor_flow.models import hub as model_hub

TREC_CARD = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")  # coarse_label names, card order
EMO_CARD = ("others", "happy", "sad", "angry")
GLUE_README = """---
configs:
- config_name: sst2
  data_files:
  - split: train
    path: sst2/train-*
  - split: validation
    path: sst2/validation-*
---
"""


def _parquet(path: Path, columns: dict, features=None) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))


def _rows(n: int, classes: int, word: str) -> tuple[list[str], list[int]]:
    return [f"{word} example {i}" for i in range(n)], [i % classes for i in range(n)]


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """``datasets.load_dataset`` over local folders laid out like the hub today."""
    import datasets

    root = tmp_path / "hub"
    main_, parquet = root / "main", root / "parquet"
    text, label = _rows(12, 2, "film")
    for split in ("train", "validation"):
        _parquet(main_ / "nyu-mll/glue/sst2" / f"{split}-00000-of-00001.parquet",
                 {"sentence": text, "label": label, "idx": list(range(12))})  # fmt: skip
    (main_ / "nyu-mll/glue/README.md").write_text(GLUE_README)
    text, label = _rows(16, 4, "news")
    for split in ("train", "test"):
        _parquet(main_ / "fancyzhx/ag_news/data" / f"{split}-00000-of-00001.parquet",
                 {"text": text, "label": label})  # fmt: skip
    for repo, script in (("CogComp/trec", "trec.py"), ("SemEvalWorkshop/emo", "emo.py")):
        (main_ / repo).mkdir(parents=True)
        (main_ / repo / script).write_text("import datasets  # a loading script\n")
    text, label = _rows(18, 6, "question")
    trec = datasets.Features({"text": datasets.Value("string"),
                              "coarse_label": datasets.ClassLabel(names=list(TREC_CARD)),
                              "fine_label": datasets.Value("int64")})  # fmt: skip
    emo = datasets.Features({"text": datasets.Value("string"),
                             "label": datasets.ClassLabel(names=list(EMO_CARD))})  # fmt: skip
    for split in ("train", "test"):
        _parquet(parquet / "CogComp/trec/default" / split / "0000.parquet",
                 {"text": text, "coarse_label": label, "fine_label": label}, trec)  # fmt: skip
        _parquet(parquet / "SemEvalWorkshop/emo/emo2019" / split / "0000.parquet",
                 {"text": text[:16], "label": [i % 4 for i in range(16)]}, emo)  # fmt: skip
    real = datasets.load_dataset
    calls: list[tuple] = []

    def stand_in(path, name=None, *, split, revision=None, data_dir=None):
        calls.append((path, name, split, revision, data_dir))
        folder = (parquet if revision == PARQUET_REVISION else main_) / path
        if revision not in (None, "main", PARQUET_REVISION) or not folder.is_dir():
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")
        return real(str(folder), name, split=split, data_dir=data_dir)

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(datasets, "load_dataset", stand_in)
    return calls


@pytest.mark.parametrize(
    ("task", "revision", "data_dir"),
    [("sst2", None, None), ("agnews", None, None), ("trec", PARQUET_REVISION, "default"),
     ("emoc", PARQUET_REVISION, "emo2019")],
)  # fmt: skip
def test_each_paper_task_loads_from_a_path_that_works(fake_hub, task, revision, data_dir):
    data = load_task_data(task)
    assert len(data.train) > 0
    assert len(data.test) > 0
    last = fake_hub[-1]
    assert (last[3], last[4]) == (revision, data_dir)
    if revision is not None:  # the main branch was tried first and refused as a script
        assert any(call[3] is None for call in fake_hub)


def test_trec_and_emoc_keep_the_dataset_cards_label_order(fake_hub):
    trec, emoc = load_task_data("trec"), load_task_data("emoc")
    # Row i has class i % C in the card's order; the task's label word must name that class.
    assert [e.label for e in trec.train[:6]] == [0, 1, 2, 3, 4, 5]
    words = dict(zip(TREC_CARD, get_task("trec").label_words, strict=True))
    assert words == {"ABBR": " Abbreviation", "ENTY": " Entity", "DESC": " Description",
                     "HUM": " Person", "LOC": " Location", "NUM": " Number"}  # fmt: skip
    assert [e.label for e in emoc.test[:4]] == [0, 1, 2, 3]
    assert [w.strip().lower() for w in get_task("emoc").label_words] == list(EMO_CARD)


def test_a_script_repository_without_a_conversion_fails_in_one_line(fake_hub, tmp_path):
    import shutil

    shutil.rmtree(tmp_path / "hub/parquet/CogComp/trec")
    with pytest.raises(TaskError) as info:
        load_task_data("trec")
    message = str(info.value)
    assert "\n" not in message
    assert "Dataset scripts are no longer supported" in message
    assert "refs/convert/parquet" in message
    assert "--data-dir DIR" in message


def test_an_unreachable_dataset_fails_in_one_line_naming_data_dir(fake_hub):
    import datasets

    def refuse(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'fancyzhx/ag_news' on the Hub\n(ConnectError)")

    datasets.load_dataset = refuse  # restored by the fixture's monkeypatch
    with pytest.raises(TaskError) as info:
        load_task_data("agnews")
    assert "\n" not in str(info.value)
    assert "--data-dir DIR" in str(info.value)


@pytest.mark.parametrize("task", ["sst2", "agnews", "trec", "emoc"])
def test_data_command_then_data_dir_draws_the_same_prompts(fake_hub, tmp_path, task):
    out = tmp_path / "local" / task
    assert main(["data", "--task", task, "--out", str(out)]) == 0
    hub, local = load_task_data(task), load_task_data(task, data_dir=out)
    for seed in (42, 43):
        for scheme in ("fixed", "per_example"):
            drawn = [
                task_prompts(
                    get_task(task), d.train, d.test, seed=seed, n_examples=5, scheme=scheme
                )
                for d in (hub, local)
            ]
            assert drawn[0] == drawn[1]


def test_without_the_hub_datasets_reads_the_cache_only(fake_hub, monkeypatch):
    import datasets

    seen = []
    stand_in = datasets.load_dataset

    def spy(*args, **kwargs):
        seen.append(datasets.config.HF_HUB_OFFLINE)
        return stand_in(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(model_hub, "_offline_flag", lambda: False)
    monkeypatch.setattr(model_hub, "_PROBED", {})
    monkeypatch.setattr(model_hub, "_connect", lambda host, port: f"{host}:{port} refused")
    load_task_data("agnews")
    assert seen == [True, True]  # offline mode inside the calls ...
    assert datasets.config.HF_HUB_OFFLINE is False  # ... and restored afterwards
    monkeypatch.setattr(model_hub, "_connect", lambda host, port: None)
    monkeypatch.setattr(model_hub, "_PROBED", {})
    load_task_data("agnews")
    assert seen[2:] == [False, False]  # a reachable hub is used as before
