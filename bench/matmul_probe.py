"""Probe launch configs of the reference MLPs' matmul kernels on the GPU, next to cuBLAS.

    python -m bench.matmul_probe [--only residual_mlp] [--out probe.json]

For every matmul region of ``residual_mlp`` and ``swiglu_mlp`` (bench sizes), each config of
``CONFIGS`` is generated (``generate(func, {region: config})``), JIT-compiled by the local Triton
and timed with ``triton.testing.do_bench`` (median, L2 cleared between runs) on the eager
reference's inputs; its outputs are checked against the reference. The same product through
``torch.nn.functional.linear`` (cuBLAS) is timed as the floor. This is a measurement aid for
the cost model and the default heuristic (``tune/costmodel.py``, ``configs.default_matmul``),
not the benchmark: ``bench/run.py`` measures packages.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, GROUP_M)
CONFIGS = (
    (128, 128, 64, 8, 3, 8), (128, 128, 64, 8, 4, 8), (128, 128, 64, 4, 4, 8),
    (128, 256, 64, 8, 3, 8), (128, 256, 64, 8, 4, 8), (256, 128, 64, 8, 3, 8),
    (256, 128, 64, 8, 4, 8), (128, 128, 128, 8, 3, 8), (64, 256, 64, 4, 4, 8),
    (128, 64, 64, 4, 4, 8), (64, 128, 64, 4, 4, 8), (128, 256, 32, 8, 4, 8),
    (256, 256, 64, 8, 3, 8), (128, 128, 64, 8, 5, 1),
)  # fmt: skip


def _median_ms(triton, fn, *args) -> float:  # noqa: ANN001 - the triton module, a callable
    """Median ms of ``fn(*args)`` by ``do_bench`` (CUDA events, L2 cleared between runs)."""
    return triton.testing.do_bench(functools.partial(fn, *args), warmup=25, rep=100,
                                   return_mode="median")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    import torch
    import triton

    from bench.specs import BY_NAME
    from esperc.backend.triton.configs import make_config
    from esperc.backend.triton.emitter import generate
    from esperc.backend.triton.kernels.matmul import find_anchor
    from esperc.backend.triton.launcher import launch, load_module
    from esperc.backend.triton.plan import KernelLaunch
    from esperc.backend.triton.regions import analyze
    from esperc.driver import Options, compile_ir
    from esperc.ir.interpreter import evaluate_all, random_inputs
    from esperc.ir.numerics import rel_err

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="residual_mlp,swiglu_mlp")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda")
    rows = []
    for name in args.only.split(","):
        spec = BY_NAME[name]
        func, _ = compile_ir(spec.path, Options())
        dims = dict(spec.dims)
        ref = evaluate_all(func, random_inputs(func, dims, seed=0, device=device), device)
        types = func.types()
        for region in func.regions:
            if region.attr("kind") != "matmul":
                continue
            anchor = find_anchor(analyze(func, region, "probe"))
            a, b = types[anchor.operands[0]], types[anchor.operands[1]]
            m = 1
            for d in a.shape[:-1]:
                m *= d if isinstance(d, int) else dims[str(d)]
            k = a.shape[-1]
            n = b.shape[0] if anchor.op.value == "linear" else b.shape[-1]
            flops = 2 * m * n * k
            x, w = ref[anchor.operands[0]], ref[anchor.operands[1]]
            product = torch.nn.functional.linear if anchor.op.value == "linear" else torch.matmul
            ms = _median_ms(triton, product, x, w)
            rows.append({"blueprint": name, "region": region.name, "config": "cublas (product only)",
                         "ms": ms, "tflops": flops / ms / 1e9})  # fmt: skip
            print(f"{name} {region.name} [{m}x{k}]@[{k}x{n}] cublas {ms:.4f} ms "
                  f"{flops / ms / 1e9:.0f} TFLOP/s", flush=True)  # fmt: skip
            for bm, bn, bk, warps, stages, group in CONFIGS:
                cfg = make_config(warps, stages, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group)
                row = {"blueprint": name, "region": region.name, "config": str(cfg)}
                try:
                    gen = generate(func, {region.name: cfg})
                    step = next(s for s in gen.plan.steps
                                if isinstance(s, KernelLaunch) and s.region == region.name)  # fmt: skip
                    kernels = load_module(gen.source)
                    env = dict(ref)
                    t0 = time.perf_counter()
                    launch(step, kernels[step.kernel], env, dims, device)
                    torch.cuda.synchronize()
                    row["compile_s"] = time.perf_counter() - t0
                    row["rel_err"] = max(rel_err(env[al.value], ref[al.value])
                                         for al in step.allocs if not al.partial_of)  # fmt: skip
                    ms = _median_ms(triton, launch, step, kernels[step.kernel], env, dims, device)
                    row.update(ms=ms, tflops=flops / ms / 1e9)
                    print(f"  {cfg}: {ms:.4f} ms {flops / ms / 1e9:.0f} TFLOP/s "
                          f"err {row['rel_err']:.1e}", flush=True)  # fmt: skip
                except Exception as e:  # noqa: BLE001 - a config that fails is a row too
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    print(f"  {cfg}: {row['error']}", flush=True)
                rows.append(row)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
