"""Unit tests of anchor_flow.icl.data: local split files, the hub path (offline), TaskData."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest

from anchor_flow.icl.data import TaskData, load_task_data, read_examples, save_task_data
from anchor_flow.icl.prompts import Example, Template
from anchor_flow.icl.tasks import Task, TaskError, get_task

TRAIN = {"text": ["dull", "fun", "skip me", "fine"], "label": [0, 1, -1, 1]}
TEST = {"text": ["great", "awful"], "label": [1, 0]}
TRAIN_EXAMPLES = (Example("dull", 0), Example("fun", 1), Example("fine", 1))
TEST_EXAMPLES = (Example("great", 1), Example("awful", 0))


def write(path: Path, columns: dict[str, list]) -> Path:
    """Write ``columns`` to ``path`` with pandas, in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(columns)
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif path.suffix == ".json":
        frame.to_json(path, orient="records", force_ascii=False)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        path.write_text("whatever\n")
    return path


def folder(tmp_path: Path, ext: str = ".jsonl", test_name: str = "test", **splits) -> Path:
    write(tmp_path / f"train{ext}", splits.get("train", TRAIN))
    write(tmp_path / f"{test_name}{ext}", splits.get("test", TEST))
    return tmp_path


# -- local files -----------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_formats(tmp_path, ext):
    data = load_task_data("sst2", data_dir=folder(tmp_path, ext))
    assert data.task is get_task("sst2")
    assert data.train == TRAIN_EXAMPLES  # the label -1 row is dropped
    assert data.test == TEST_EXAMPLES
    assert data.source == f"local:{tmp_path.resolve()}"


def test_task_subfolder_layout(tmp_path):
    folder(tmp_path / "agnews")
    write(tmp_path / "sst2" / "train.csv", TRAIN)  # another task's data is not looked at
    data = load_task_data("agnews", data_dir=tmp_path)
    assert data.train == TRAIN_EXAMPLES
    assert data.source == f"local:{(tmp_path / 'agnews').resolve()}"


def test_sst2_accepts_its_validation_split(tmp_path):
    data = load_task_data("sst2", data_dir=folder(tmp_path, ".csv", test_name="validation"))
    assert data.test == TEST_EXAMPLES


@pytest.mark.parametrize("name", ["sst2", "agnews", "trec", "emoc"])
def test_text_label_files_work_for_every_task(tmp_path, name):
    data = load_task_data(name, data_dir=folder(tmp_path, ".csv"))
    assert data.train == TRAIN_EXAMPLES


def test_task_columns_win_over_the_fallback(tmp_path):
    # TREC reads coarse_label when it is there, even next to a "label" column.
    columns = {"text": ["q1", "q2"], "coarse_label": [5, 3], "label": [40, 41]}
    path = write(tmp_path / "test.parquet", columns)
    assert read_examples(path, task=get_task("trec")) == (Example("q1", 5), Example("q2", 3))
    # SST-2 reads GLUE's "sentence" column.
    path = write(
        tmp_path / "x.jsonl", {"sentence": ["a", "b"], "text": ["x", "y"], "label": [0, 1]}
    )
    assert read_examples(path, task=get_task("sst2")) == (Example("a", 0), Example("b", 1))


def test_label_strings_are_mapped_to_class_indices(tmp_path):
    # Label names and label words, ignoring case and spaces; digit strings; "-1" drops the row.
    labels = ["Human", " Person", "PERSON ", "3", "-1", "abbreviation", " Number"]
    path = write(tmp_path / "train.csv", {"text": list("abcdefg"), "label": labels})
    trec = read_examples(path, task=get_task("trec"))
    assert [(e.text, e.label) for e in trec] == [
        ("a", 3), ("b", 3), ("c", 3), ("d", 3), ("f", 0), ("g", 5),
    ]  # fmt: skip
    path = write(
        tmp_path / "sst2.jsonl", {"text": list("abcd"), "label": [" Positive", "negative", 1, 0]}
    )
    assert [e.label for e in read_examples(path, task=get_task("sst2"))] == [1, 0, 1, 0]


def test_csv_texts_stay_strings(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text,label\n007,0\nNA,1\n"a, quoted\ntext",1\n')
    assert read_examples(path, task=get_task("sst2")) == (
        Example("007", 0),
        Example("NA", 1),
        Example("a, quoted\ntext", 1),
    )


def test_negative_labels_are_dropped(tmp_path):
    path = write(tmp_path / "train.jsonl", {"text": ["a", "b", "c"], "label": [-1, 1, -2]})
    assert read_examples(path, task=get_task("sst2")) == (Example("b", 1),)


def test_task_by_description_file(tmp_path):
    spec = {
        "name": "spam",
        "format": "Message: {text}\nKind:{label}",
        "label_words": [" Ham", " Spam"],
    }
    (tmp_path / "spam.json").write_text(json.dumps(spec))
    folder(tmp_path / "data", train={"text": ["hi", "buy"], "label": ["ham", "Spam"]})
    data = load_task_data(str(tmp_path / "spam.json"), data_dir=tmp_path / "data")
    assert data.task.name == "spam"
    assert data.train == (Example("hi", 0), Example("buy", 1))


# -- local errors ----------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(TaskError, match=r"data_dir '.*nowhere' does not exist; expected a folder"):
        load_task_data("sst2", data_dir=tmp_path / "nowhere")
    file = write(tmp_path / "train.csv", TRAIN)
    with pytest.raises(TaskError, match=r"train\.csv' is not a folder"):
        load_task_data("sst2", data_dir=file)


def test_no_split_file(tmp_path):
    write(tmp_path / "train.csv", TRAIN)
    write(tmp_path / "dev.csv", TEST)
    expected = (
        "has no test file for task 'sst2'; found ['dev.csv', 'train.csv']; expected "
        "test.<ext> or validation.<ext> (ext: jsonl, json, csv, parquet)"
    )
    with pytest.raises(TaskError, match=re.escape(expected)):
        load_task_data("sst2", data_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match=r"has no train file for task 'agnews'; found nothing"):
        load_task_data("agnews", data_dir=tmp_path / "empty")


def test_two_files_for_one_split(tmp_path):
    folder(tmp_path, ".csv")
    write(tmp_path / "train.jsonl", TRAIN)
    with pytest.raises(
        TaskError, match=r"has 2 files for the train split .*train\.csv.*train\.jsonl"
    ):
        load_task_data("sst2", data_dir=tmp_path)


def test_test_and_validation_together_are_ambiguous_for_sst2(tmp_path):
    folder(tmp_path, ".csv")
    write(tmp_path / "validation.csv", TEST)
    with pytest.raises(TaskError, match=r"2 files for the test split.*expected exactly one"):
        load_task_data("sst2", data_dir=tmp_path)


def test_same_split_in_folder_and_task_subfolder_is_ambiguous(tmp_path):
    folder(tmp_path, ".csv")
    write(tmp_path / "sst2" / "test.csv", TEST)
    with pytest.raises(TaskError, match=r"2 files for the test split"):
        load_task_data("sst2", data_dir=tmp_path)


def test_unknown_extension(tmp_path):
    write(tmp_path / "train.csv", TRAIN)
    write(tmp_path / "test.tsv", TEST)
    with pytest.raises(TaskError, match=r"test\.tsv' has an unknown extension '\.tsv'; expected"):
        load_task_data("agnews", data_dir=tmp_path)
    with pytest.raises(TaskError, match=r"unknown extension '\.tsv'; expected one of \.jsonl"):
        read_examples(tmp_path / "test.tsv", task=get_task("agnews"))


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(TaskError, match=r"cannot read '.*missing\.csv'"):
        read_examples(tmp_path / "missing.csv", task=get_task("sst2"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 0}\n{"text": \n')
    with pytest.raises(TaskError, match=r"cannot parse '.*bad\.jsonl' as jsonl"):
        read_examples(bad, task=get_task("sst2"))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(TaskError, match=r"cannot parse '.*broken\.parquet' as parquet"):
        read_examples(broken, task=get_task("sst2"))


def test_missing_columns(tmp_path):
    path = write(tmp_path / "train.csv", {"review": ["a"], "label": [0]})
    expected = (
        "has no column 'sentence' or 'text' for task 'sst2'; found columns ['review', 'label']"
    )
    with pytest.raises(TaskError, match=re.escape(expected)):
        read_examples(path, task=get_task("sst2"))
    path = write(tmp_path / "test.csv", {"text": ["a"], "class": [0]})
    with pytest.raises(
        TaskError, match=r"no column 'coarse_label' or 'label' .*\['text', 'class'\]"
    ):
        read_examples(path, task=get_task("trec"))


def test_empty_dataset(tmp_path):
    path = write(tmp_path / "train.jsonl", {"text": ["a", "b"], "label": [-1, -1]})
    with pytest.raises(
        TaskError, match=r"train\.jsonl': empty dataset \(2 rows, 2 with a negative"
    ):
        read_examples(path, task=get_task("sst2"))
    empty = tmp_path / "test.csv"
    empty.write_text("text,label\n")
    with pytest.raises(TaskError, match="empty dataset"):
        read_examples(empty, task=get_task("sst2"))


@pytest.mark.parametrize(
    ("label", "shown"),
    [(2, "2"), ("neutral", "'neutral'"), (1.5, "1.5"), (None, "missing"), (True, "True")],
)
def test_bad_labels(tmp_path, label, shown):
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps({"text": "a", "label": 0}) + "\n" + json.dumps({"text": "b", "label": label})
    )
    expected = (
        f"train.jsonl', data row 2: label {shown} is not a class of task 'sst2'; expected a "
        "class index 0..1 or a label name/word (0='negative'/'Negative', 1='positive'/'Positive')"
    )
    with pytest.raises(TaskError, match=re.escape(expected)):
        read_examples(path, task=get_task("sst2"))


def test_bad_label_in_csv_names_the_row(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\na,0\nb,1\nc,7\n")
    with pytest.raises(TaskError, match=r"train\.csv', data row 3: label '7' is not a class"):
        read_examples(path, task=get_task("sst2"))


def test_ambiguous_label_string(tmp_path):
    task = Task("swap", Template(), (" yes", " no"), ("no", "yes"))
    path = write(tmp_path / "train.csv", {"text": ["a"], "label": ["yes"]})
    with pytest.raises(TaskError, match=r"data row 1: label 'yes' names several classes \[0, 1\]"):
        read_examples(path, task=task)


def test_texts_must_be_strings(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\na,0\n,1\n")
    with pytest.raises(TaskError, match=r"data row 2: text nan in column 'text' is missing"):
        read_examples(path, task=get_task("sst2"))
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": 12, "label": 1}\n')
    with pytest.raises(TaskError, match=r"data row 2: text 12 in column 'text' is int; expected a"):
        read_examples(path, task=get_task("sst2"))


# -- the hub (never reached in tests) ---------------------------------------------------------

HUB_HINT = (
    ". Offline? Put train/test files in a folder and pass data_dir=... (--data-dir DIR): "
    "DIR/train.jsonl and DIR/test.jsonl with columns text,label"
)


def test_hub_error_is_a_task_error(monkeypatch):
    import datasets

    def refuse(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    expected = (
        "cannot load dataset 'nyu-mll/glue' (sst2) from the Hugging Face hub: ConnectionError: "
        "Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled) (split 'train')" + HUB_HINT
    )
    with pytest.raises(TaskError, match=re.escape(expected)) as info:
        load_task_data("sst2")
    assert isinstance(info.value.__cause__, ConnectionError)


def test_hub_script_refusal_is_explained(monkeypatch):
    import datasets

    def refuse(*args, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found trec.py")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(
        TaskError, match=r"cannot load dataset 'CogComp/trec' from .*does not run the dataset's"
    ):
        load_task_data("trec")


def test_real_offline_hub_call_fails_fast(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    # HF_HUB_OFFLINE=1 (conftest); empty caches so a cached copy cannot make the call succeed.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(TaskError, match=r"cannot load dataset 'nyu-mll/glue' \(sst2\) from the"):
        load_task_data("sst2")
    assert time.perf_counter() - start < 30


def test_hub_rows_are_read_like_local_rows(monkeypatch):
    import datasets

    calls = []
    splits = {
        "train": {"sentence": ["dull", "fun"], "label": [0, 1], "idx": [0, 1]},
        "validation": {"sentence": ["great", "hidden"], "label": [1, -1], "idx": [0, 1]},
    }

    def fake(path, name, *, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(splits[split])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    data = load_task_data("sst2")
    assert calls == [("nyu-mll/glue", "sst2", "train"), ("nyu-mll/glue", "sst2", "validation")]
    assert data.train == (Example("dull", 0), Example("fun", 1))
    assert data.test == (Example("great", 1),)
    assert data.source == "hub:nyu-mll/glue/sst2"


def test_task_without_hub_needs_a_data_dir():
    task = Task("mine", Template(), (" a", " b"), ("a", "b"))
    with pytest.raises(TaskError, match=r"task 'mine' has no hub_id.*pass data_dir=\.\.\."):
        load_task_data(task)


# -- TaskData and saving ---------------------------------------------------------------------


def test_save_and_reload(tmp_path):
    data = load_task_data("trec", data_dir=folder(tmp_path / "in", ".parquet"))
    out = save_task_data(data, tmp_path / "out" / "trec")
    assert out == tmp_path / "out" / "trec"
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl"]
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert first == {"text": "dull", "label": 0}
    again = load_task_data("trec", data_dir=tmp_path / "out")  # DIR/<task>/ layout
    assert (again.train, again.test) == (data.train, data.test)
    save_task_data(again, out)  # overwrites in place
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl"]


def test_save_into_a_file_path_fails(tmp_path):
    data = load_task_data("sst2", data_dir=folder(tmp_path))
    with pytest.raises(TaskError, match=r"cannot create data folder '.*train\.jsonl'"):
        save_task_data(data, tmp_path / "train.jsonl")


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ((), "the train split is empty"),
        ((Example("a", 2),), "train example 0 has label 2; expected a class index in 0..1"),
        ((Example("a"),), "train example 0 has label None"),
    ],
)
def test_task_data_validates(train, expected):
    with pytest.raises(TaskError, match=re.escape(expected)):
        TaskData(get_task("sst2"), train, TEST_EXAMPLES, "local:/x")
