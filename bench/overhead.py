"""Per-call and start-up costs: a bare Triton launch, and load-to-first-result in new processes.

- ``launch_floor_us``: host µs per call of a trivial Triton kernel (and of a one-element torch
  op), the floor a loaded package's per-call overhead is compared with.
- ``cold_start``: three child processes, each timing from "torch imported, CUDA up, inputs on
  the GPU" to "first output synchronized": the ``.kpkg`` (``import esperc``, ``esperc.load``,
  call), ``torch.compile`` cold (empty Inductor and Triton caches) and ``torch.compile`` warm (a
  second process on the caches the cold one filled).

Run as ``python -m bench.overhead child MODE NAME ARGS_JSON [KPKG]`` for one child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

from bench.packages import ROOT, child_env
from esperc.cli_bench import host_overhead_us


@triton.jit
def _bump(ptr):
    tl.store(ptr, tl.load(ptr) + 1)


def launch_floor_us() -> dict[str, Any]:
    """Host µs per call of a bare Triton launch and of a one-element ``torch`` op."""
    out: dict[str, Any] = {}
    try:
        x = torch.zeros(1, device="cuda")  # a counter the trivial kernel bumps; not timed data
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    for name, call in (("triton_bare_launch", lambda: _bump[(1,)](x)),
                       ("torch_add_", lambda: x.add_(1))):  # fmt: skip
        try:
            out[name] = host_overhead_us(call, calls=2000, rounds=5).median_ms
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            out[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
    return out


def arg_specs(func: Any, dims: dict[str, int]) -> list[tuple[str, list[int], str]]:
    """(name, concrete shape, dtype name) of every argument, for a child process."""
    from esperc.ir.reference import concrete_shape

    return [(a.name, list(concrete_shape(a.type.shape, dims)), str(a.type.dtype))
            for a in func.args]  # fmt: skip


_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def _child(mode: str, name: str, args_json: str, kpkg: str | None) -> None:
    start = time.perf_counter()
    torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    from bench.peers import REFS  # the references load with the harness, not with the peer

    ready = time.perf_counter()
    gen = torch.Generator(device="cuda").manual_seed(0)
    tensors = {n: torch.randn(shape, device="cuda", generator=gen).to(_DTYPES[dt])
               for n, shape, dt in json.loads(args_json)}  # fmt: skip
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if mode == "kpkg":
        import esperc

        fn = esperc.load(kpkg, fallback="error")
    else:
        fn = torch.compile(REFS[name], dynamic=False)
    fn(**tensors)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    print(json.dumps({"first_result_s": t1 - t0, "cuda_init_s": ready - start}), flush=True)


def _spawn(args: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.overhead", "child", *args]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-4:])
        return {"error": f"exit {proc.returncode}: {tail}"[-400:], "process_s": wall}
    return json.loads(lines[-1]) | {"process_s": wall}


def cold_start(
    name: str, args: list[tuple[str, list[int], str]], kpkg: str | None, timeout_s: float
) -> dict[str, Any]:
    """Load-to-first-result of the package and of torch.compile, cold and warm (seconds)."""
    blob = json.dumps(args)
    out: dict[str, Any] = {"blueprint": name}
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        fresh = {"TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor", "TRITON_CACHE_DIR": f"{tmp}/triton"}
        if kpkg is not None:
            out["kpkg"] = _spawn(["kpkg", name, blob, kpkg], child_env(**fresh), timeout_s)
        else:
            out["kpkg"] = {"error": "no package"}
        out["torch.compile cold"] = _spawn(["compile", name, blob], child_env(**fresh), timeout_s)
        out["torch.compile warm"] = _spawn(["compile", name, blob], child_env(**fresh), timeout_s)
    return out


if __name__ == "__main__" and len(sys.argv) >= 5 and sys.argv[1] == "child":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
