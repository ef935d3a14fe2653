"""AOT compilation of Triton kernels to cubins on a machine without a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from esperc.backend.triton.aot import (  # noqa: E402
    ELF_MAGIC,
    AotCompileError,
    ArgKind,
    KernelSpec,
    compile_kernel,
    compile_many,
    cubin_resource_usage,
    parse_target,
)

ADD_SRC = """
import triton
import triton.language as tl


@triton.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x + y, mask=mask)
"""

MATMUL_SRC = """
import triton
import triton.language as tl


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, BM: tl.constexpr, stride_am, stride_bk,
                  stride_cm, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
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
    y = h.to(tl.float32) + b.to(tl.float32) + f + d.to(tl.float32) + c.to(tl.float32)
    y = tl.where(flag, y, -y) + big.to(tl.float32)
    tl.store(out_ptr + offs, y + tl.zeros((BLOCK,), tl.float32), mask=offs < n)
"""

ADD_SIG = {"x_ptr": "*fp32", "y_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32"}
MATMUL_SIG = {
    "a_ptr": "*bf16",
    "b_ptr": "*bf16",
    "c_ptr": "*fp32",
    "M": "i32",
    "N": "i32",
    "K": "i32",
    "stride_am": "i32",
    "stride_bk": "i32",
    "stride_cm": "i32",
}
TARGETS = ["sm_90", "sm_80"]


def _scratch_count(version: str) -> int:
    """Trailing scratch pointers: global since Triton 3.3, profile since 3.5."""
    v = tuple(int(p) for p in version.split(".")[:2])
    return int(v >= (3, 3)) + int(v >= (3, 5))


def add_spec(target: str, **kw) -> KernelSpec:
    return KernelSpec(ADD_SRC, "add_kernel", ADD_SIG, {"BLOCK": 1024}, target=target, **kw)


def matmul_spec(target: str) -> KernelSpec:
    return KernelSpec(
        MATMUL_SRC,
        "matmul_kernel",
        MATMUL_SIG,
        {"BM": 64, "BN": 64, "BK": 32},
        target=target,
        num_warps=4,
        num_stages=3,
        divisible_by_16=("a_ptr", "b_ptr", "c_ptr", "stride_am", "stride_bk", "stride_cm"),
    )


@pytest.fixture(scope="module", params=TARGETS)
def add(request):
    return compile_kernel(add_spec(request.param, divisible_by_16=("x_ptr", "y_ptr", "out_ptr")))


@pytest.fixture(scope="module", params=TARGETS)
def matmul(request):
    return compile_kernel(matmul_spec(request.param))


def test_add_cubin_and_layout(add):
    import triton

    assert add.cubin.startswith(ELF_MAGIC)
    assert add.name == "add_kernel"
    assert add.triton_version == triton.__version__
    user = [(a.name, a.type, a.kind, a.nbytes, a.divisible_by_16) for a in add.user_args]
    assert user == [
        ("x_ptr", "*fp32", ArgKind.POINTER, 8, True),
        ("y_ptr", "*fp32", ArgKind.POINTER, 8, True),
        ("out_ptr", "*fp32", ArgKind.POINTER, 8, True),
        ("n", "i32", ArgKind.SCALAR, 4, False),
    ]
    scratch = [a.kind for a in add.args[len(add.user_args) :]]
    assert (
        scratch
        == [ArgKind.GLOBAL_SCRATCH, ArgKind.PROFILE_SCRATCH][: _scratch_count(add.triton_version)]
    )
    assert add.num_warps == 4 and add.num_ctas == 1
    assert add.global_scratch_size == 0 and add.profile_scratch_size == 0
    assert add.constexprs == (("BLOCK", 1024),)
    assert ".entry add_kernel" in add.ptx


def test_matmul_uses_shared_memory(matmul):
    assert matmul.cubin.startswith(ELF_MAGIC)
    assert matmul.name == "matmul_kernel"
    # tl.dot stages at least one bf16 A tile (64x32) and B tile (32x64) through shared memory
    assert matmul.shared >= (64 * 32 + 32 * 64) * 2
    names = [a.name for a in matmul.user_args]
    assert names == [
        "a_ptr",
        "b_ptr",
        "c_ptr",
        "M",
        "N",
        "K",
        "stride_am",
        "stride_bk",
        "stride_cm",
    ]
    assert [a.divisible_by_16 for a in matmul.user_args] == [True] * 3 + [False] * 3 + [True] * 3
    assert matmul.n_regs is not None and 16 <= matmul.n_regs <= 255


def test_targets_give_different_cubins():
    k80, k90 = (compile_kernel(matmul_spec(t)) for t in ("sm_80", "sm_90"))
    assert (k80.target, k90.target) == ("sm_80", "sm_90")
    assert k80.cubin != k90.cubin
    assert ".target sm_90a" in k90.ptx and ".target sm_80" in k80.ptx


def test_compile_is_deterministic_and_leaves_no_cache(tmp_path, monkeypatch):
    cache = tmp_path / "ambient-cache"
    cache.mkdir()
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache))
    first = compile_kernel(add_spec("sm_90"))
    second = compile_kernel(add_spec("sm_90"))
    assert first.cubin == second.cubin
    assert first == second
    assert list(cache.iterdir()) == []
    assert os.environ["TRITON_CACHE_DIR"] == str(cache)
    assert not any(str(k).startswith("esperc_kernels/") for k in __import__("linecache").cache)


def test_scalar_types_layout():
    sig = {
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
    k = compile_kernel(KernelSpec(SCALARS_SRC, "scalars_kernel", sig, {"BLOCK": 128}))
    assert [(a.name, a.nbytes) for a in k.user_args] == [
        ("out_ptr", 8),
        ("h", 2),
        ("b", 2),
        ("f", 4),
        ("d", 8),
        ("c", 1),
        ("flag", 1),
        ("big", 8),
        ("n", 4),
    ]


def test_constexpr_between_runtime_args_is_dropped(matmul):
    # BM sits between K and stride_am in the definition; it is not a kernel parameter
    assert "BM" not in [a.name for a in matmul.args]


def test_resource_usage_matches_cuobjdump(add):
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    # Triton's NVIDIA backend ships cuobjdump; CI always has it.
    assert tool.exists() or shutil.which("cuobjdump"), "cuobjdump not found"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"esperc-test-{os.getpid()}.cubin"
    path.write_bytes(add.cubin)
    try:
        out = subprocess.run(
            [str(tool if tool.exists() else "cuobjdump"), "-res-usage", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        path.unlink()
    line = next(x for x in out.splitlines() if "REG:" in x)
    fields = dict(f.split(":") for f in line.split() if ":" in f)
    assert add.n_regs == int(fields["REG"])
    assert add.frame_bytes == int(fields["STACK"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"constexprs": {}}, "no type or constexpr value"),
        ({"signature": {**ADD_SIG, "z": "i32"}}, "no parameters named"),
        ({"signature": {**ADD_SIG, "n": "i31"}}, "unsupported type"),
        ({"divisible_by_16": ("BLOCK",)}, "divisible_by_16"),
        ({"kernel_name": "nope"}, "no @triton.jit function"),
        ({"source": ADD_SRC + "\nraise ValueError('boom')\n"}, "does not import"),
        ({"target": "hopper"}, "not of the form"),
    ],
)
def test_bad_specs_raise(change, message):
    fields = {"source": ADD_SRC, "kernel_name": "add_kernel", "signature": ADD_SIG}
    fields["constexprs"] = {"BLOCK": 1024}
    fields.update(change)
    with pytest.raises(AotCompileError, match=message):
        compile_kernel(KernelSpec(**fields))


def test_triton_errors_are_wrapped():
    bad = ADD_SRC.replace("x + y", "x + undefined_name")
    with pytest.raises(AotCompileError, match="add_kernel"):
        compile_kernel(KernelSpec(bad, "add_kernel", ADD_SIG, {"BLOCK": 1024}))


def test_parse_target():
    assert parse_target("sm_90") == 90 and parse_target("sm_90a") == 90
    assert parse_target("sm_80") == 80


def test_resource_usage_rejects_non_elf():
    with pytest.raises(AotCompileError):
        cubin_resource_usage(b"not a cubin", "k")


def test_compile_many_keeps_order():
    out = compile_many([add_spec("sm_80"), matmul_spec("sm_90")], max_workers=2)
    assert [(k.name, k.target) for k in out] == [
        ("add_kernel", "sm_80"),
        ("matmul_kernel", "sm_90"),
    ]


@pytest.mark.parametrize("module", ["esperc.backend.triton.aot", "esperc.runtime.cubin"])
def test_import_is_light(module):
    root = Path(__file__).resolve().parents[2]
    code = (
        f"import sys; import {module}; "
        "heavy = {'torch', 'triton', 'lark', 'typer'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# --- the launch ABI esperc.runtime.cubin builds from the layout (no GPU needed) -------------------


def test_launch_params_follow_the_layout(add):
    import ctypes

    from esperc.runtime import cubin

    keep: list = []
    params = cubin._pack_args(add, [0x1000, 0x2000, 0x3000, 77], 0, (2, 1, 1), 0, keep)
    assert len(params) == len(add.args)
    read = [ctypes.c_uint64.from_address(params[i]).value for i in range(3)]
    assert read == [0x1000, 0x2000, 0x3000]
    assert ctypes.c_int32.from_address(params[3]).value == 77
    assert all(ctypes.c_uint64.from_address(p).value == 0 for p in params[4:])  # null scratch


def test_launch_scalar_encodings():
    import ctypes
    import struct

    from esperc.backend.triton.aot import KernelArg
    from esperc.runtime import cubin

    def enc(ty, value):
        arg = KernelArg("v", ty, ArgKind.SCALAR, 0)
        return bytes(cubin._to_ctype(_FakeKernel(), arg, value, 0))

    assert enc("fp16", 1.5) == struct.pack("<e", 1.5)
    assert enc("bf16", 1.0) == b"\x80\x3f"  # upper half of fp32 1.0 (0x3f800000)
    assert enc("bf16", 1.0 + 2**-8) == b"\x80\x3f"  # tie rounds to even
    assert enc("bf16", 1.0 + 3 * 2**-9) == b"\x81\x3f"  # above the tie rounds up
    assert enc("fp64", -2.5) == struct.pack("<d", -2.5)
    assert enc("i1", True) == b"\x01"
    assert enc("i64", -(2**40)) == struct.pack("<q", -(2**40))
    assert (
        ctypes.sizeof(
            cubin._to_ctype(_FakeKernel(), KernelArg("n", "i32", ArgKind.SCALAR, 4), 5, 0)
        )
        == 4
    )
    with pytest.raises(cubin.CubinLaunchError, match="not an integer"):
        enc("i32", 2**31)
    with pytest.raises(cubin.CubinLaunchError, match="not an integer"):
        enc("i32", 1.5)


def test_launch_config_and_grid(add):
    import dataclasses

    from esperc.runtime import cubin
    from esperc.runtime import cuda_driver as cu

    clustered = dataclasses.replace(add, num_ctas=2, launch_pdl=True)
    config, attrs = cubin._launch_config(clustered, (3, 4, 5), 1234)
    assert (config.gridDimX, config.gridDimY, config.gridDimZ) == (6, 4, 5)
    assert config.blockDimX == 32 * add.num_warps and config.sharedMemBytes == add.shared
    assert config.numAttrs == 3
    assert [attrs[i].id for i in range(3)] == [
        cu.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        cu.CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
        cu.CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE,
    ]
    assert list(attrs[1].value.clusterDim) == [2, 1, 1]
    assert cubin._check_grid(add, (7,)) == (7, 1, 1)
    for bad in [(), (1, 2, 3, 4), (-1,), (1, 70000)]:
        with pytest.raises(cubin.CubinLaunchError):
            cubin._check_grid(add, bad)


class _FakeKernel:
    name = "k"
