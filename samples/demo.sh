#!/usr/bin/env bash
# The whole chain on samples/residual_mlp.esp, as a newcomer runs it with `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
sample=samples/residual_mlp.esp
step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "1. the blueprint" cat "$sample"
step "2. its SSA graph IR" esperc compile "$sample" --emit ir
step "3. the eager PyTorch reference on random inputs" esperc run "$sample" --eager --dim B=4
