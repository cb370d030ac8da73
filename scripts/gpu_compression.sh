#!/usr/bin/env bash
# Hidden_anchor speed (paper Table 3) on a GPU: the GPT2-XL shape through TransformerBridge
# (TL 4.3), batch 1 and 16, plus a profile of one batch-1 compressed query vs one full forward.
#
# Offline: installs only the wheels in .whl/ (ignored by git: run with carry [".whl"]), next
# to the machine's own torch + CUDA + transformers. Writes everything under $OUT. About 3 min.
#
#   bash scripts/gpu_compression.sh        # from the repository root, $OUT set
set -o pipefail
OUT=${OUT:-/tmp/gpu_compression}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers, transformer_lens as tl, importlib.metadata as m
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers',
      transformers.__version__, 'transformer_lens', m.version('transformer-lens'))
if tuple(int(p) for p in transformers.__version__.split('.')[:2]) >= (5, 24):
    print('WARNING: transformers >= 5.24 renamed past_key_values; TL 4.3 then ignores the cache')"
} 2>&1 | tee "$OUT/versions.txt" || exit 1

echo "== XL shape, batch 1 (paper), with a profile of the TREC lengths"
timeout 150 python3 benchmarks/compression.py --device cuda --shapes xl --tl-class bridge \
    --batch 1 --repeats 20 --warmup 3 --profile trec 2>&1 | tee "$OUT/compression_xl_b1.txt"
echo "== XL shape, batch 16"
timeout 75 python3 benchmarks/compression.py --device cuda --shapes xl --tl-class bridge \
    --batch 16 --repeats 10 --warmup 2 2>&1 | tee "$OUT/compression_xl_b16.txt"
# The tables alone, for a quick look.
grep -A6 "^device=" "$OUT"/compression_xl_b*.txt > "$OUT/tables.txt"
cat "$OUT/tables.txt"
