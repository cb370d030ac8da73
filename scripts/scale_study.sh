#!/usr/bin/env bash
# Do label-word anchors appear with scale? GPT-2 small -> medium -> large -> XL (12, 24, 36, 48
# layers) on one task with one protocol, then one comparison page (docs/compare.md).
#
# Needs a GPU and the hub (or the weights and data in the local caches). NOT RUN in this
# repository's CI or by the session that wrote it: no hub access there. Each run is resumable:
# rerunning the script skips what is complete.
#
#   bash scripts/scale_study.sh                               # the paper's protocol, SST-2
#   TASK=agnews EXTRA="--on-overflow skip" bash scripts/scale_study.sh
#   SEEDS=42 N_EXAMPLES=200 bash scripts/scale_study.sh       # a quick look (~1/25 the work)
#   MODELS="EleutherAI/pythia-70m EleutherAI/pythia-410m EleutherAI/pythia-1.4b" bash scripts/scale_study.sh
#
# Every run gets a null model (the same architecture re-initialised; --null-model random-init,
# also above the default 500M-parameter limit), so that each model's findings have their
# control on the page. NULL_MODEL=auto skips it for gpt2-large and gpt2-xl (half the cost of
# their saliency + deep-layer experiments again).
set -euo pipefail
MODELS=${MODELS:-"gpt2 gpt2-medium gpt2-large gpt2-xl"}
TASK=${TASK:-sst2}
SEEDS=${SEEDS:-42,43,44,45,46}
N_EXAMPLES=${N_EXAMPLES:-1000}
DEVICE=${DEVICE:-cuda}
NULL_MODEL=${NULL_MODEL:-random-init}
OUT=${OUT:-results/scale}
EXTRA=${EXTRA:-}
ANCHOR_FLOW=${ANCHOR_FLOW:-anchor-flow}

mkdir -p "$OUT"
folders=()
for model in $MODELS; do
    folder="$OUT/${model//\//_}-$TASK"
    echo "== $model -> $folder"
    # shellcheck disable=SC2086  # EXTRA holds several options on purpose
    $ANCHOR_FLOW run --model "$model" --task "$TASK" --device "$DEVICE" --seeds "$SEEDS" \
        --n-examples "$N_EXAMPLES" --null-model "$NULL_MODEL" --out "$folder" --quiet $EXTRA
    folders+=("$folder")
done
$ANCHOR_FLOW compare "${folders[@]}" --out "$OUT/scale-$TASK.html"
