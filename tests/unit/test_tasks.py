"""Unit tests of anchor_flow.icl.tasks: the paper's four tasks, the registry, task description
files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Split
from transformers import PreTrainedTokenizerFast

from anchor_flow.icl.prompts import Example, ICLPrompt, Template, tokenize_prompts
from anchor_flow.icl.roles import Role
from anchor_flow.icl.tasks import (
    Task,
    TaskError,
    get_task,
    load_task_file,
    register_task,
    task_names,
)

# Paper Table 4 (PAPER.md §0.3), written out independently of tasks.py.
TABLE_4 = {
    "sst2": ("Review: {text}\nSentiment:{label}", (" Negative", " Positive")),
    "agnews": (
        "Article: {text}\nAnswer:{label}",
        (" World", " Sports", " Business", " Technology"),
    ),
    "trec": (
        "Question: {text}\nAnswer Type:{label}",
        (" Abbreviation", " Entity", " Description", " Person", " Location", " Number"),
    ),
    "emoc": ("Dialogue: {text}\nEmotion:{label}", (" Others", " Happy", " Sad", " Angry")),
}
# A word keeps its leading space; "\n" and ":" are tokens of their own.
PIECES = re.compile(r" ?[^\s:]+|\n|:| ")


def word_level_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary is every piece of ``texts``."""
    vocab = {"<unk>": 0}
    for text in texts:
        for piece in PIECES.findall(text):
            vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Split(Regex(PIECES.pattern), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def test_the_four_paper_tasks_are_registered():
    assert {"sst2", "agnews", "trec", "emoc"} <= set(task_names())
    assert get_task("sst2").test_split == "validation"  # GLUE test labels are hidden
    assert get_task("trec").label_column == "coarse_label"
    assert get_task("trec").label_token_policy == "first"


@pytest.mark.parametrize("name", sorted(TABLE_4))
def test_paper_task_prompt_format_and_roles(name):
    task = get_task(name)
    fmt, words = TABLE_4[name]
    assert task.label_words == words
    demos = tuple(Example(f"q{c}", c) for c in range(task.n_classes))
    prompt = ICLPrompt(task.template, task.label_words, demos, Example("qx"))
    expected = "\n".join(
        [fmt.format(text=d.text, label=words[d.label]) for d in demos]
        + [fmt.format(text="qx", label="")]
    )
    assert prompt.text() == expected
    assert prompt.text().endswith(fmt.split("{text}")[1].replace("{label}", ""))

    tokenizer = word_level_tokenizer([expected, *words])
    batch = tokenize_prompts(
        [prompt], tokenizer, label_token_policy=task.label_token_policy, prepend_bos=False
    )
    tokens = batch.tokens[0].tolist()
    positions = batch.label_positions(0)
    assert [tokens[p] for p in positions] == [
        tokenizer.convert_tokens_to_ids(w) for w in words
    ]  # one demo per class, in class order here
    assert [int(batch.label_class[0, p]) for p in positions] == list(range(task.n_classes))
    target = int(batch.target_position[0])
    assert target == len(batch.str_tokens[0]) - 1
    assert batch.str_tokens[0][target] == ":"
    # Every token of the label prefix ("\nAnswer Type:") is FORMAT, except the query's last ":".
    prefix_pieces = PIECES.findall(task.template.label_prefix)
    n = len(prefix_pieces)
    roles = batch.roles[0].tolist()
    for p in positions:
        assert list(batch.str_tokens[0][p - n : p]) == prefix_pieces
        assert roles[p - n : p] == [Role.FORMAT] * n
    assert list(batch.str_tokens[0][-n:]) == prefix_pieces
    assert roles[-n:] == [Role.FORMAT] * (n - 1) + [Role.TARGET]


def test_trec_prompt_text_exactly():
    task = get_task("trec")
    demos = (Example("q1", 0), Example("q2", 3))
    prompt = ICLPrompt(task.template, task.label_words, demos, Example("q3"))
    assert prompt.text() == (
        "Question: q1\nAnswer Type: Abbreviation\n"
        "Question: q2\nAnswer Type: Person\n"
        "Question: q3\nAnswer Type:"
    )


def test_registry_refuses_duplicates():
    with pytest.raises(TaskError, match="a task named 'sst2' is already registered"):
        register_task(get_task("sst2"))


def test_get_task_unknown_name():
    with pytest.raises(TaskError, match=r"unknown task 'sst3'; expected one of sst2, agnews"):
        get_task("sst3")


def test_get_task_passes_a_task_through():
    task = get_task("agnews")
    assert get_task(task) is task


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"name": ""}, "non-empty name"),
        ({"label_words": (" a",), "label_names": ("a",)}, "has 1 label words; expected at least 2"),
        ({"label_names": ("a",)}, "2 label words but 1 label names"),
        ({"label_words": (" a", " a")}, "repeats a label word"),
    ],
)
def test_task_validates(kwargs, expected):
    fields = {
        "name": "mine",
        "template": Template(),
        "label_words": (" a", " b"),
        "label_names": ("a", "b"),
    }
    with pytest.raises(TaskError, match=re.escape(expected)):
        Task(**(fields | kwargs))


SPEC = {
    "name": "spam",
    "format": "Message: {text}\nKind:{label}",
    "label_words": [" Ham", " Spam"],
    "text_column": "body",
}


def test_user_task_from_json(tmp_path):
    path = tmp_path / "spam.json"
    path.write_text(json.dumps(SPEC | {"label_names": ["ham", "spam"], "hub_id": None}))
    task = load_task_file(path)
    assert task.name == "spam"
    assert task.template.render("hi", " Ham") == "Message: hi\nKind: Ham"
    assert task.label_names == ("ham", "spam")
    assert task.text_column == "body"
    assert task.label_column == "label"
    assert task.hub_id is None
    assert get_task(path) == task  # a path works wherever a task name does
    assert get_task(str(path)) == task


def test_user_task_label_names_default_to_stripped_words(tmp_path):
    path = tmp_path / "spam.json"
    path.write_text(json.dumps(SPEC))
    assert load_task_file(path).label_names == ("Ham", "Spam")


def test_user_task_from_yaml(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML is not installed")
    path = tmp_path / "spam.yaml"
    path.write_text(
        "name: spam\n"
        'format: "Message: {text}\\nKind:{label}"\n'
        "label_words: [' Ham', ' Spam']\n"
        "label_token_policy: first\n"
    )
    task = load_task_file(path)
    assert task.template == Template.from_format("Message: {text}\nKind:{label}")
    assert task.label_words == (" Ham", " Spam")
    assert task.label_token_policy == "first"


def test_user_task_bad_yaml(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML is not installed")
    path = tmp_path / "spam.yml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(TaskError, match="is not valid YAML"):
        load_task_file(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (json.dumps({"name": "x"}), "lacks format, label_words"),
        (json.dumps(SPEC | {"colour": 1, "size": 2}), "unknown keys ['colour', 'size']; expected"),
        ("{not json", "is not valid JSON"),
        (json.dumps(["a list"]), "must hold a mapping, got list"),
        (json.dumps(SPEC | {"label_words": " Ham Spam"}), "label_words must be a list of strings"),
        (json.dumps(SPEC | {"label_words": [" Ham", 2]}), "label_words must be a list of strings"),
        (json.dumps(SPEC | {"label_names": ["only one"]}), "2 label words but 1 label names"),
        (json.dumps(SPEC | {"label_names": "ab"}), "label_names must be a list of strings"),
        (json.dumps(SPEC | {"label_token_policy": "last"}), "label_token_policy='last'; expected"),
        (json.dumps(SPEC | {"text_column": 3}), "text_column must be a string, got 3"),
        (json.dumps(SPEC | {"separator": None}), "separator must be a string, got None"),
        (json.dumps(SPEC | {"format": "Message: {text}"}), "must contain '{text}' and '{label}'"),
    ],
)
def test_task_file_errors(tmp_path, content, expected):
    path = tmp_path / "task.json"
    path.write_text(content)
    with pytest.raises(TaskError, match=re.escape(expected)) as info:
        load_task_file(path)
    assert str(path) in str(info.value)


def test_task_file_unreadable(tmp_path):
    missing = tmp_path / "nowhere.json"
    with pytest.raises(TaskError, match=r"cannot read task description .*nowhere\.json"):
        load_task_file(missing)
    with pytest.raises(TaskError, match="cannot read task description"):
        get_task(missing)  # a .json path that does not exist is still read as a file
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(TaskError, match="expected a JSON or YAML file"):
        load_task_file(folder)


def test_task_file_not_utf8(tmp_path: Path):
    path = tmp_path / "task.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TaskError, match=r"cannot read task description .*task\.json.*utf-8"):
        load_task_file(path)
