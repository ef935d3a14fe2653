#!/usr/bin/env bash
# The whole chain on samples/residual_mlp.esp, as a newcomer runs it with `make demo`:
# source -> IR -> kernel regions -> Triton -> sm_90 + sm_80 cubins in one .kpkg -> inspect ->
# run it in Triton's interpreter and compare with PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ESPERC_CACHE_DIR="${ESPERC_CACHE_DIR:-$PWD/out/cache}"
sample=samples/residual_mlp.esp
pkg=out/residual_mlp.kpkg
mkdir -p out
step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "1. the blueprint" cat "$sample"
step "2. its SSA graph IR" esperc compile "$sample" --emit ir
step "3. after the middle end: kernel regions, divergence and shared-memory plans" \
  esperc compile "$sample" --emit opt-ir --target sm_90
step "4. compile: Triton kernels, cubins for sm_90 and sm_80, validated, packed" \
  esperc compile "$sample" --target sm_90,sm_80 -o "$pkg"
step "5. what is in the package (checksums verified)" esperc inspect "$pkg" --verify
step "6. the Triton source of one kernel" esperc inspect "$pkg" --source residual_mlp_k2
step "7. run the package (Triton interpreter on this CPU) against the eager PyTorch reference" \
  esperc run "$pkg" --dim B=5
step "8. and against an independent PyTorch implementation" \
  .venv/bin/python samples/compare_with_torch.py "$pkg" residual_mlp
