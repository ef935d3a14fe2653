#!/usr/bin/env bash
# One call of the lent GPU machine: set-up, then the stages named on the command line, each
# logged under $OUT (the device tool brings back at most 8 files, 2 folders deep).
#
#   bash bench/gpu_session.sh tests probe tune        # GPU tests, matmul probe, autotune
#   bash bench/gpu_session.sh profile                 # per-kernel device times (kernel_profile)
#   bash bench/gpu_session.sh bench                   # the benchmark harness on kpkgs/tuned
#
# Environment: TEST_ARGS (pytest selection, default tests/gpu), TUNE_ARGS (bench.tune flags,
# default --train), TUNE_BUDGET (s per blueprint, 15), TUNE_TIMEOUT (s, 420), BENCH_ARGS.
#
# Carry: .whl (lark, tomli-w, zstandard, liger-kernel wheels), gpu_pkgs (tests/gpu packages),
# kpkgs (bench packages built on the CPU machine, NAME.kpkg / NAME.train.kpkg + .json).
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl >"$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv >>"$OUT/setup.log" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  >>"$OUT/setup.log" 2>&1
status=0
for stage in "$@"; do
  start=$(date +%s)
  case "$stage" in
    tests)
      ESPERC_GPU_PKGS=gpu_pkgs timeout 240 python3 -m pytest ${TEST_ARGS:-tests/gpu} -q -p no:cacheprovider -rf \
        >"$OUT/tests.log" 2>&1 || status=1 ;;
    probe)
      timeout 200 python3 -m bench.matmul_probe --out "$OUT/probe.json" >"$OUT/probe.log" 2>&1 \
        || status=1 ;;
    profile)
      kp=kpkgs; [ -d tuned ] && kp=tuned
      timeout 200 python3 -m bench.kernel_profile --kpkg-dir "$kp" --out "$OUT/profile.json" \
        >"$OUT/profile.log" 2>&1 || status=1 ;;
    tune)
      timeout "${TUNE_TIMEOUT:-420}" python3 -m bench.tune --kpkg-dir kpkgs --out tuned \
        --budget-s "${TUNE_BUDGET:-15}" --state /tmp/tune-state ${TUNE_ARGS:---train} \
        >"$OUT/tune.log" 2>&1 || status=1
      python3 -c "import sqlite3; s = sqlite3.connect('/tmp/tune-state/perfdb.sqlite'); \
d = sqlite3.connect('$OUT/perfdb.sqlite'); s.backup(d)" 2>>"$OUT/tune.log"
      tar czf "$OUT/tuned.tgz" tuned ;;
    bench)
      kp=kpkgs; [ -d tuned ] && kp=tuned
      timeout 560 python3 bench/run.py --esperc-kpkg-dir "$kp" --out "$OUT/bench" \
        ${BENCH_ARGS:-} >"$OUT/bench.log" 2>&1 || status=1 ;;
    *) echo "unknown stage $stage"; status=2 ;;
  esac
  echo "stage $stage: $(( $(date +%s) - start )) s, status so far $status" | tee -a "$OUT/setup.log"
done
tail -n 25 "$OUT"/*.log
exit $status
