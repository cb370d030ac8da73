"""Models and tasks whose mechanism is known: toy, synthetic, demo and the planted checkpoints.

Importing this package registers the built-in tasks (toy-sentiment, synthetic-k*, demo-k*) in
anchor_flow.icl.tasks and the built-in models (toy-gpt2, demo, planted-*) in
anchor_flow.models.loading.

May import: icl, models (errors always).
Never imported by: models, results, icl, analysis, applications, report, run.
"""

from anchor_flow.icl.prompts import Template
from anchor_flow.icl.tasks import Task, register_generated_task, register_task
from anchor_flow.models.loading import register_builtin_model
from anchor_flow.testbeds import demo, planted, synthetic, toy


def _register_builtins() -> None:
    # Order matters only for listings (task_names, error messages): the paper's four tasks
    # come first (icl.tasks), then these, as before they moved here.
    register_task(
        Task(
            name="toy-sentiment",
            template=Template(input_prefix="Review:", label_prefix="\nSentiment:"),
            label_words=(" Negative", " Positive"),
            label_names=("negative", "positive"),
            description="24 built-in toy sentences, SST-2 format (offline; for pipelines, "
            "not science)",
            builtin_data=toy.toy_sentiment_data,
        )
    )
    for k in (2, 3, 4):
        register_generated_task(
            f"synthetic-k{k}",
            synthetic.SYNTHETIC_TEMPLATE,
            k,
            synthetic.synthetic_prompts,
            f"synthetic topics, {k} classes, label words drawn per prompt from "
            f"{synthetic.DEFAULT_SPEC.n_label_words} (anchor_flow.testbeds.synthetic; for the "
            "planted models)",
        )
        register_generated_task(
            f"demo-k{k}",
            demo.DEMO_TEMPLATE,
            k,
            demo.demo_prompts,
            f"the demo model's task: {k} classes, prototypes and label words drawn per prompt "
            "(anchor_flow.testbeds.demo; TOY_NOTES recipe B)",
        )
    register_builtin_model("toy-gpt2", toy.write_toy_gpt2_folder)
    # Trained by scripts/train_demo.py and shipped inside the package: read in place.
    register_builtin_model("demo", demo.write_demo_folder, shipped_folder=demo.DEMO_FOLDER)
    for kind in planted.PLANTED_KINDS:
        register_builtin_model(
            f"planted-{kind}",
            planted.writer(kind),
            cache_tag=planted.construction_tag,
        )


_register_builtins()
