"""Classification tasks: the paper's four (Table 4) and the user's own (PAPER.md §0.2, §0.3, §7).

A :class:`Task` knows how one demonstration is written (a
:class:`~anchor_flow.icl.prompts.Template`), its label words and label names, and where its data
lives (Hugging Face dataset id, config, splits and columns). The registry holds the paper's SST-2,
AGNews, TREC (coarse) and EmoC exactly as the paper's Table 4 and code define them, under current
hub ids, and refuses duplicate names. A user task comes from Python (construct a :class:`Task`) or
from a small JSON/YAML description file (:func:`load_task_file`).

Deliberately not here: reading data (:mod:`anchor_flow.icl.data`) and the sampling protocol
(:mod:`anchor_flow.icl.sampling`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from anchor_flow.errors import AnchorFlowError
from anchor_flow.icl.prompts import Example, ICLPrompt, Template

__all__ = [
    "Task",
    "TaskError",
    "get_task",
    "load_task_file",
    "register_generated_task",
    "register_task",
    "task_names",
]


class TaskError(AnchorFlowError):
    """A task name, description file or dataset is unknown or malformed."""


LabelTokenPolicy = Literal["single", "first", "all"]


@dataclass(frozen=True)
class Task:
    """A text-classification task for in-context learning.

    Example:
        >>> sst2 = get_task("sst2")
        >>> sst2.template.render("a fine film", sst2.label_words[1])
        'Review: a fine film\\nSentiment: Positive'

    Attributes:
        name: registry key, e.g. ``"sst2"``.
        template: how one demonstration is written (paper Table 4).
        label_words: the word each class is answered with, leading space included.
        label_names: human-readable class names (plots, confusion matrices).
        hub_id, hub_config: the Hugging Face dataset (``None`` for local-only tasks).
        hub_parquet_config: the config folder of the hub's parquet conversion
            (``refs/convert/parquet``), read when the main branch is a loading script
            (default: ``hub_config``, else ``"default"``; EmoC's is ``"emo2019"``).
        train_split, test_split: the demonstration pool and the evaluation split.
        text_column, label_column: columns of the dataset's rows.
        label_token_policy: how multi-token label words are handled (see
            :func:`anchor_flow.icl.prompts.tokenize_prompts`). The paper's four tasks use
            ``"first"``, the official code's rule on every tokenizer (the first token is the
            anchor; with single-token words it equals ``"single"``); other tasks ``"single"``.
        description: one line for listings and reports.
        builtin_data: for tasks shipped with the package (no hub, no folder): a function
            returning the ``(train, test)`` examples, used when no ``data_dir`` is given.
        prompt_source: for tasks that generate whole prompts (e.g. ``synthetic-k2``, whose
            class -> label-word mapping is drawn per prompt): ``prompt_source(seed,
            n_examples, shots_per_class)`` returns the prompts, and
            :func:`anchor_flow.icl.sampling.task_prompts` uses it instead of sampling ``train``
            and ``test``. ``label_words`` then only fixes the class count.
    """

    name: str
    template: Template
    label_words: tuple[str, ...]
    label_names: tuple[str, ...]
    hub_id: str | None = None
    hub_config: str | None = None
    hub_parquet_config: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    text_column: str = "text"
    label_column: str = "label"
    label_token_policy: LabelTokenPolicy = "single"
    description: str = ""
    builtin_data: Callable[[], tuple[Sequence[Example], Sequence[Example]]] | None = field(
        default=None, compare=False, repr=False
    )
    prompt_source: Callable[[int, int, int], Sequence[ICLPrompt]] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if not self.name:
            raise TaskError("a task needs a non-empty name")
        if len(self.label_words) < 2:
            raise TaskError(
                f"task {self.name!r} has {len(self.label_words)} label words; expected at least 2"
            )
        if len(self.label_names) != len(self.label_words):
            raise TaskError(
                f"task {self.name!r} has {len(self.label_words)} label words but "
                f"{len(self.label_names)} label names; expected one name per label word"
            )
        if len(set(self.label_words)) != len(self.label_words):
            raise TaskError(f"task {self.name!r} repeats a label word: {self.label_words!r}")
        if self.label_token_policy not in ("single", "first", "all"):
            raise TaskError(
                f"task {self.name!r}: label_token_policy={self.label_token_policy!r}; expected "
                "'single', 'first' or 'all'"
            )

    @property
    def n_classes(self) -> int:
        return len(self.label_words)


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry; a name that is already taken is refused."""
    if task.name in _REGISTRY:
        raise TaskError(f"a task named {task.name!r} is already registered; choose another name")
    _REGISTRY[task.name] = task
    return task


def task_names() -> tuple[str, ...]:
    """Names of the registered tasks."""
    return tuple(_REGISTRY)


def get_task(name_or_file: str | os.PathLike[str] | Task) -> Task:
    """A registered task by name, or a user task from a JSON/YAML description file.

    Example:
        >>> get_task("trec").label_words[0]
        ' Abbreviation'
    """
    if isinstance(name_or_file, Task):
        return name_or_file
    key = str(name_or_file)
    if key in _REGISTRY:
        return _REGISTRY[key]
    path = Path(key)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.is_file():
        return load_task_file(path)
    raise TaskError(
        f"unknown task {key!r}; expected one of {', '.join(_REGISTRY)} or the path of a task "
        "description file (.json/.yaml)"
    )


def load_task_file(path: str | os.PathLike[str]) -> Task:
    """A user task from a JSON or YAML description.

    The file holds ``name``, ``format`` (e.g. ``"Review: {text}\\nSentiment:{label}"``) and
    ``label_words``; optionally ``label_names``, ``separator``, ``text_column``,
    ``label_column``, ``train_split``, ``test_split``, ``hub_id``, ``hub_config``,
    ``hub_parquet_config``,
    ``label_token_policy`` and ``description``. The data itself is read from ``--data-dir``
    (see :mod:`anchor_flow.icl.data`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise TaskError(
            f"cannot read task description {str(path)!r} ({reason}); expected a JSON or "
            "YAML file with name, format and label_words"
        ) from error
    spec = _parse_description(path, text)
    missing = [key for key in ("name", "format", "label_words") if key not in spec]
    if missing:
        raise TaskError(f"task description {str(path)!r} lacks {', '.join(missing)}")
    known = {
        "name", "format", "label_words", "label_names", "separator", "text_column",
        "label_column", "train_split", "test_split", "hub_id", "hub_config",
        "hub_parquet_config", "label_token_policy", "description",
    }  # fmt: skip
    unknown = sorted(set(spec) - known)
    if unknown:
        raise TaskError(
            f"task description {str(path)!r} has unknown keys {unknown}; expected {sorted(known)}"
        )
    label_words = spec["label_words"]
    if not isinstance(label_words, list) or not all(isinstance(w, str) for w in label_words):
        raise TaskError(
            f"{str(path)!r}: label_words must be a list of strings, got {label_words!r}"
        )
    optional = {
        key: spec[key]
        for key in (
            "text_column", "label_column", "train_split", "test_split", "hub_id", "hub_config",
            "hub_parquet_config", "label_token_policy", "description",
        )
        if key in spec
    }  # fmt: skip
    separator = spec.get("separator", "\n")
    for key, value in (*optional.items(), ("separator", separator)):
        nullable = ("hub_id", "hub_config", "hub_parquet_config")
        if not isinstance(value, str) and not (value is None and key in nullable):
            raise TaskError(f"{str(path)!r}: {key} must be a string, got {value!r}")
    policy = optional.get("label_token_policy", "single")
    if policy not in ("single", "first", "all"):
        raise TaskError(
            f"{str(path)!r}: label_token_policy={policy!r}; expected 'single', 'first' or 'all'"
        )
    label_names = spec.get("label_names", [w.strip() for w in label_words])
    if not isinstance(label_names, list) or not all(isinstance(n, str) for n in label_names):
        raise TaskError(
            f"{str(path)!r}: label_names must be a list of strings, got {label_names!r}"
        )
    try:
        return Task(
            name=str(spec["name"]),
            template=Template.from_format(str(spec["format"]), separator=separator),
            label_words=tuple(label_words),
            label_names=tuple(label_names),
            **optional,
        )
    except AnchorFlowError as error:  # name the file in Task/Template validation errors
        raise TaskError(f"task description {str(path)!r}: {error}") from error


def _parse_description(path: Path, text: str) -> dict[str, Any]:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as error:
            raise TaskError(
                f"{str(path)!r} is YAML but PyYAML is not installed; pip install pyyaml or use JSON"
            ) from error
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise TaskError(f"{str(path)!r} is not valid YAML: {error}") from error
    else:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as error:
            raise TaskError(f"{str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(spec, dict):
        raise TaskError(f"{str(path)!r} must hold a mapping, got {type(spec).__name__}")
    return spec


# The paper's four tasks (PAPER.md §0.2, §0.3): templates, label words and current hub ids.
# label_token_policy="first" everywhere: the official code anchors a label word's first token
# on any tokenizer (GPT-2's " Abbreviation", Llama-2's " Negative"/" Angry" are several tokens).
register_task(
    Task(
        name="sst2",
        template=Template(input_prefix="Review:", label_prefix="\nSentiment:"),
        label_words=(" Negative", " Positive"),
        label_names=("negative", "positive"),
        hub_id="nyu-mll/glue",
        hub_config="sst2",
        test_split="validation",  # GLUE's test labels are hidden; the paper uses validation
        text_column="sentence",
        label_token_policy="first",
        description="SST-2 sentiment (GLUE), 2 classes",
    )
)
register_task(
    Task(
        name="agnews",
        template=Template(input_prefix="Article:", label_prefix="\nAnswer:"),
        label_words=(" World", " Sports", " Business", " Technology"),
        label_names=("world", "sports", "business", "sci/tech"),
        hub_id="fancyzhx/ag_news",
        label_token_policy="first",
        description="AG News topic classification, 4 classes",
    )
)
register_task(
    Task(
        name="trec",
        template=Template(input_prefix="Question:", label_prefix="\nAnswer Type:"),
        label_words=(
            " Abbreviation",
            " Entity",
            " Description",
            " Person",
            " Location",
            " Number",
        ),
        # coarse_label order of the current dataset (ABBR, ENTY, DESC, HUM, LOC, NUM).
        label_names=("abbreviation", "entity", "description", "human", "location", "number"),
        hub_id="CogComp/trec",
        hub_parquet_config="default",  # main holds trec.py only (PAPER.md §0.2)
        label_column="coarse_label",
        label_token_policy="first",
        description="TREC question type (coarse), 6 classes",
    )
)
register_task(
    Task(
        name="emoc",
        template=Template(input_prefix="Dialogue:", label_prefix="\nEmotion:"),
        label_words=(" Others", " Happy", " Sad", " Angry"),
        label_names=("others", "happy", "sad", "angry"),
        hub_id="SemEvalWorkshop/emo",
        hub_parquet_config="emo2019",  # main holds emo.py only (PAPER.md §0.2)
        label_token_policy="first",
        description="EmoContext (SemEval 2019 task 3) emotion, 4 classes",
    )
)


PromptGenerator = Callable[..., Sequence[ICLPrompt]]


def register_generated_task(
    name: str, template: Template, k: int, generate: PromptGenerator, description: str
) -> None:
    """Register a task whose prompts are generated whole, label words drawn per prompt.

    ``generate(n, k=k, shots_per_class=..., seed=...)`` returns the prompts of one seed; the
    task's label words are placeholders (only their number, ``k``, matters). The testbeds
    register ``synthetic-k*`` and ``demo-k*`` this way.

    Raises:
        TaskError: a task named ``name`` is already registered.
    """

    def source(seed: int, n_examples: int, shots_per_class: int) -> Sequence[ICLPrompt]:
        return generate(n_examples, k=k, shots_per_class=shots_per_class, seed=seed)

    def data() -> tuple[Sequence[Example], Sequence[Example]]:
        # load_task_data (and `anchor-flow data`) need examples; the prompts come from source.
        prompts = generate(8, k=k, seed=0)
        return [d for p in prompts for d in p.demonstrations], [p.query for p in prompts]

    register_task(
        Task(
            name=name,
            template=template,
            label_words=tuple(f" L{i}" for i in range(k)),  # placeholders: only K matters
            label_names=tuple(f"class {i}" for i in range(k)),
            description=description,
            builtin_data=data,
            prompt_source=source,
        )
    )
