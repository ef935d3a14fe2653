"""Compile with esperc's AOT path, then load and launch the cubin with the driver API, no Triton.

Run with pytest (``-m gpu``) or as a script: ``python3 tests/gpu/test_cubin_launch.py``.
``--write-fixtures`` (re)writes tests/gpu/fixtures/ from the local Triton, for sm_90, on a CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from esperc.backend.triton.aot import (  # noqa: E402
    ArgKind,
    CompiledKernel,
    KernelArg,
    KernelSpec,
    compile_kernel,
)

try:
    import pytest

    pytestmark = pytest.mark.gpu
except ImportError:  # the device machine may lack pytest: the script runner below stands in
    pytest = None

ADD_SRC = """
import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask),
             mask=mask)
"""

MATMUL_SRC = """
import triton
import triton.language as tl


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_bk, stride_cm,
                  BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * stride_am + (k + rk)[None, :],
                    mask=(rm[:, None] < M) & ((k + rk)[None, :] < K), other=0.0)
        b = tl.load(b_ptr + (k + rk)[:, None] * stride_bk + rn[None, :],
                    mask=((k + rk)[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc,
             mask=(rm[:, None] < M) & (rn[None, :] < N))
"""

SCALARS_SRC = """
import triton
import triton.language as tl


@triton.jit
def scalars_kernel(out_ptr, h, b, f, d, c, flag, big, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    base = tl.where(flag, 1.0, -1.0)
    tl.store(out_ptr + 0, h.to(tl.float32))
    tl.store(out_ptr + 1, b.to(tl.float32))
    tl.store(out_ptr + 2, f)
    tl.store(out_ptr + 3, d.to(tl.float32))
    tl.store(out_ptr + 4, c.to(tl.float32))
    tl.store(out_ptr + 5, base)
    tl.store(out_ptr + 6, (big - 4294967296).to(tl.float32))
    tl.store(out_ptr + 7 + offs, offs.to(tl.float32), mask=offs < n)
"""

DESC_SRC = """
import triton
import triton.language as tl


@triton.jit
def desc_kernel(x_ptr, out_ptr, M, N, BM: tl.constexpr, BN: tl.constexpr):
    src = tl.make_tensor_descriptor(x_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN])
    dst = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[N, 1], block_shape=[BM, BN])
    pm = tl.program_id(0) * BM
    pn = tl.program_id(1) * BN
    dst.store([pm, pn], src.load([pm, pn]) * 2)
"""

ADD_SIG = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}
MATMUL_SIG = {
    "a_ptr": "*bf16",
    "b_ptr": "*bf16",
    "c_ptr": "*fp32",
    **{n: "i32" for n in ("M", "N", "K", "stride_am", "stride_bk", "stride_cm")},
}
SCALARS_SIG = {
    "out_ptr": "*fp32",
    "h": "fp16",
    "b": "bf16",
    "f": "fp32",
    "d": "fp64",
    "c": "i8",
    "flag": "i1",
    "big": "i64",
    "n": "i32",
}
DESC_SIG = {"x_ptr": "*fp32", "out_ptr": "*fp32", "M": "i32", "N": "i32"}


def add_spec(target: str) -> KernelSpec:
    aligned = ("x_ptr", "y_ptr", "out_ptr")
    return KernelSpec(ADD_SRC, "add_kernel", ADD_SIG, {"BLOCK": 1024}, target, 4, 3, 1, aligned)


def matmul_spec(target: str) -> KernelSpec:
    aligned = ("a_ptr", "b_ptr", "c_ptr", "stride_am", "stride_bk", "stride_cm")
    consts = {"BM": 128, "BN": 256, "BK": 64}
    return KernelSpec(MATMUL_SRC, "matmul_kernel", MATMUL_SIG, consts, target, 8, 3, 1, aligned)


def desc_spec(target: str) -> KernelSpec:
    aligned = ("x_ptr", "out_ptr", "N")
    return KernelSpec(
        DESC_SRC, "desc_kernel", DESC_SIG, {"BM": 32, "BN": 32}, target, 4, 3, 1, aligned
    )


def local_target() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


# --- serialising a CompiledKernel for the cross-version fixtures ---------------------------------


def kernel_to_json(k: CompiledKernel) -> dict:
    fields = {f.name: getattr(k, f.name) for f in dataclasses.fields(k)}
    del fields["cubin"], fields["ptx"]
    fields["args"] = [{**dataclasses.asdict(a), "kind": a.kind.value} for a in k.args]
    fields["constexprs"] = [list(c) for c in k.constexprs]
    fields["cubin_sha256"] = hashlib.sha256(k.cubin).hexdigest()
    return fields


def kernel_from_json(meta: dict, cubin: bytes) -> CompiledKernel:
    meta = dict(meta)
    assert meta.pop("cubin_sha256") == hashlib.sha256(cubin).hexdigest()
    args = tuple(KernelArg(**{**a, "kind": ArgKind(a["kind"])}) for a in meta.pop("args"))
    consts = tuple(tuple(c) for c in meta.pop("constexprs"))
    return CompiledKernel(cubin=cubin, args=args, constexprs=consts, ptx="", **meta)


def write_fixtures() -> None:
    FIXTURES.mkdir(exist_ok=True)
    for spec in (add_spec("sm_90"), desc_spec("sm_90")):
        k = compile_kernel(spec)
        stem = f"{k.name}.{k.target}"
        (FIXTURES / f"{stem}.cubin").write_bytes(k.cubin)
        (FIXTURES / f"{stem}.json").write_text(json.dumps(kernel_to_json(k), indent=1) + "\n")
        print(f"wrote {stem}.cubin ({len(k.cubin)} bytes, triton {k.triton_version})")


def load_fixture(name: str) -> CompiledKernel:
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return kernel_from_json(meta, (FIXTURES / f"{name}.cubin").read_bytes())


# --- proving that no Triton compilation happens ---------------------------------------------------


@contextlib.contextmanager
def no_triton_compile():
    """Make every Triton compile entry point raise and point its cache at an empty directory."""
    import triton
    import triton.compiler
    import triton.compiler.compiler
    from triton.runtime.jit import JITFunction

    def refuse(*args, **kwargs):
        raise AssertionError("Triton was asked to compile during load/launch")

    patched = [
        (triton, "compile"),
        (triton.compiler, "compile"),
        (triton.compiler.compiler, "compile"),
        (JITFunction, "run"),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name in patched]
    old_env = os.environ.get("TRITON_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        for obj, name in patched:
            setattr(obj, name, refuse)
        try:
            yield
        finally:
            for obj, name, value in saved:
                setattr(obj, name, value)
            if old_env is None:
                del os.environ["TRITON_CACHE_DIR"]
            else:
                os.environ["TRITON_CACHE_DIR"] = old_env
        assert os.listdir(cache) == [], os.listdir(cache)


# --- tests ----------------------------------------------------------------------------------------


def test_add_matches_torch():
    import torch

    from esperc.runtime.cubin import CubinRuntime

    k = compile_kernel(add_spec(local_target()))
    x = torch.randn(100_003, device="cuda")
    y = torch.randn(100_003, device="cuda")
    out = torch.empty_like(x)
    rt = CubinRuntime()
    with no_triton_compile():
        rt.launch(k, (triton_cdiv(x.numel(), 1024),), x, y, out, x.numel())
        torch.cuda.synchronize()
    torch.testing.assert_close(out, x + y, rtol=0, atol=0)


def test_matmul_large_shared_memory_matches_torch():
    import torch

    from esperc.runtime.cubin import CubinRuntime

    k = compile_kernel(matmul_spec(local_target()))
    # not multiples of the tile (masks are exercised); strides are multiples of 16 as promised
    m, n, kk = 300, 528, 272
    a = torch.randn(m, kk, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(kk, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(m, n, device="cuda", dtype=torch.float32)
    rt = CubinRuntime()
    with no_triton_compile():
        grid = (triton_cdiv(m, 128), triton_cdiv(n, 256))
        rt.launch(k, grid, a, b, c, m, n, kk, a.stride(0), b.stride(0), c.stride(0))
        torch.cuda.synchronize()
    expected = a.float() @ b.float()
    torch.testing.assert_close(c, expected, rtol=1e-3, atol=1e-3)
    print(f"  matmul: shared={k.shared} B (> 48 KiB: {k.shared > 48 * 1024}), n_regs={k.n_regs}")


def test_scalar_packing():
    import torch

    from esperc.runtime.cubin import CubinRuntime

    k = compile_kernel(KernelSpec(SCALARS_SRC, "scalars_kernel", SCALARS_SIG, {"BLOCK": 16}))
    out = torch.full((7 + 16,), -7.0, device="cuda")
    with no_triton_compile():
        CubinRuntime().launch(k, (1,), out, 1.5, -2.25, 3.125, 1e10, -5, True, 2**32 + 9, 16)
        torch.cuda.synchronize()
    expected = [1.5, -2.25, 3.125, 1e10, -5.0, 1.0, 9.0] + [float(i) for i in range(16)]
    torch.testing.assert_close(out.cpu(), torch.tensor(expected), rtol=0, atol=0)


def test_global_scratch_kernel():
    import torch

    from esperc.runtime.cubin import CubinRuntime

    if local_target() != "sm_90":
        skip("device-side TMA descriptors (global scratch) need sm_90")
    k = compile_kernel(desc_spec("sm_90"))
    assert k.global_scratch_size > 0
    x = torch.randn(96, 160, device="cuda")
    out = torch.zeros_like(x)
    with no_triton_compile():
        CubinRuntime().launch(k, (3, 5), x, out, 96, 160)
        torch.cuda.synchronize()
    torch.testing.assert_close(out, 2 * x, rtol=0, atol=0)
    print(f"  desc: global_scratch_size={k.global_scratch_size} align={k.global_scratch_align}")


def test_side_stream_and_module_cache():
    import torch

    from esperc.runtime.cubin import CubinRuntime

    k = compile_kernel(add_spec(local_target()))
    rt = CubinRuntime()
    x = torch.arange(4096, device="cuda", dtype=torch.float32)
    out = torch.empty_like(x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        rt.launch(k, (4,), x, x, out, x.numel())
    rt.launch(k, (4,), x, x, out, x.numel(), stream=side.cuda_stream)
    side.synchronize()
    torch.testing.assert_close(out, 2 * x, rtol=0, atol=0)
    assert len(rt._loaded) == 1
    loaded = rt.load(k, torch.cuda.current_device())
    assert loaded.n_regs == k.n_regs, (loaded.n_regs, k.n_regs)
    print(f"  add: n_regs elf={k.n_regs} driver={loaded.n_regs} local={loaded.local_bytes}")
    rt.close()


def test_errors_are_clear():
    import torch

    from esperc.runtime.cubin import CubinLaunchError, CubinRuntime

    k = compile_kernel(add_spec(local_target()))
    rt = CubinRuntime()
    x = torch.randn(64, device="cuda")
    cases = [
        (lambda: rt.launch(k, (1,), x, x, x), "takes 4 arguments"),
        (lambda: rt.launch(k, (1,), x[1:], x, x, 63), "not 16-byte aligned"),
        (lambda: rt.launch(k, (1,), x.cpu(), x, x, 64), "tensor is on cpu"),
        (lambda: rt.launch(k, (1,), x, x, x, 2**40), "not an integer"),
        (lambda: rt.launch(k, (-1,), x, x, x, 64), "grid"),
    ]
    other = "sm_80" if local_target() != "sm_80" else "sm_90"
    k_other = compile_kernel(add_spec(other))
    cases.append((lambda: rt.launch(k_other, (1,), x, x, x, 64), "was compiled for"))
    garbage = dataclasses.replace(k, cubin=b"\x7fELF" + bytes(60))
    cases.append((lambda: rt.launch(garbage, (1,), x, x, x, 64), "CUDA_ERROR_"))
    for call, message in cases:
        try:
            call()
        except CubinLaunchError as exc:
            assert message in str(exc), (message, str(exc))
            print(f"  raised as expected: {exc}")
        else:
            raise AssertionError(f"no CubinLaunchError for {message!r}")


def test_driver_refuses_cubin_of_other_major_arch():
    """Without esperc's own check, does the driver load an sm_80 cubin on sm_90 (or vice versa)?"""
    import ctypes

    from esperc.runtime import cuda_driver as cu
    from esperc.runtime.cubin import CubinRuntime

    other = "sm_80" if local_target() != "sm_80" else "sm_90"
    k = compile_kernel(add_spec(other))
    module = ctypes.c_void_p()
    with CubinRuntime()._context(0):
        try:
            cu.driver().call("cuModuleLoadData", ctypes.byref(module), k.cubin)
        except cu.CudaDriverError as exc:
            print(f"  {other} cubin on {local_target()}: {exc}")
        else:
            cu.driver().call("cuModuleUnload", module)
            print(f"  {other} cubin on {local_target()}: loaded (driver accepted it)")


def test_fixture_cubins_from_other_triton_version():
    import torch

    from esperc.runtime.cubin import CubinRuntime

    if local_target() != "sm_90":
        skip("fixtures are sm_90 cubins")
    add = load_fixture("add_kernel.sm_90")
    desc = load_fixture("desc_kernel.sm_90")
    rt = CubinRuntime()
    x = torch.randn(5000, device="cuda")
    out = torch.empty_like(x)
    m = torch.randn(64, 96, device="cuda")
    m_out = torch.zeros_like(m)
    with no_triton_compile():
        rt.launch(add, (triton_cdiv(5000, 1024),), x, x, out, 5000)
        rt.launch(desc, (2, 3), m, m_out, 64, 96)
        torch.cuda.synchronize()
    torch.testing.assert_close(out, 2 * x, rtol=0, atol=0)
    torch.testing.assert_close(m_out, 2 * m, rtol=0, atol=0)
    print(
        f"  fixtures compiled by triton {add.triton_version} ran here; scratch args: "
        f"{[a.name for a in desc.args[len(desc.user_args) :]]}"
    )


LAUNCH_WITHOUT_TRITON = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from esperc.runtime.cubin import CubinRuntime
sys.path.insert(0, sys.argv[1] + "/tests/gpu")
meta = json.loads(open(sys.argv[2]).read())
cubin = open(sys.argv[3], "rb").read()
from test_cubin_launch import kernel_from_json
k = kernel_from_json(meta, cubin)
x = torch.arange(2048, device="cuda", dtype=torch.float32)
out = torch.empty_like(x)
CubinRuntime().launch(k, (2,), x, x, out, 2048)
torch.cuda.synchronize()
assert torch.equal(out, 2 * x)
print("triton imported:", sorted(m for m in sys.modules if m == "triton" or m.startswith("triton.")))
"""


def test_launch_in_a_process_without_triton_imported():
    k = compile_kernel(add_spec(local_target()))
    with tempfile.TemporaryDirectory() as tmp:
        meta, cubin = Path(tmp) / "k.json", Path(tmp) / "k.cubin"
        meta.write_text(json.dumps(kernel_to_json(k)))
        cubin.write_bytes(k.cubin)
        # the helper imports this module for kernel_from_json, which imports aot (not triton)
        result = subprocess.run(
            [sys.executable, "-c", LAUNCH_WITHOUT_TRITON, str(ROOT), str(meta), str(cubin)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert "triton imported: []" in result.stdout, result.stdout
    print("  subprocess:", result.stdout.strip())


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def skip(reason: str) -> None:
    if pytest is not None:
        pytest.skip(reason)
    raise _Skip(reason)


class _Skip(Exception):
    pass


def _run_as_script() -> int:
    import torch
    import triton

    print(
        f"torch {torch.__version__}, triton {triton.__version__}, "
        f"{torch.cuda.get_device_name()} ({local_target()}), CUDA {torch.version.cuda}"
    )
    failed = 0
    for name, fn in list(globals().items()):
        if not name.startswith("test_"):
            continue
        start = time.perf_counter()
        try:
            fn()
            status = "PASS"
        except _Skip as exc:
            status = f"SKIP ({exc})"
        except Exception:
            status = "FAIL"
            failed += 1
            traceback.print_exc()
        print(f"{status} {name} ({time.perf_counter() - start:.2f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    if "--write-fixtures" in sys.argv:
        write_fixtures()
    else:
        sys.exit(_run_as_script())
