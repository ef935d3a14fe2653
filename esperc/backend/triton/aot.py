"""Ahead-of-time compilation of one generated Triton kernel to a cubin, on a machine with no GPU.

The compiler hands over the Python source of a module holding one ``@triton.jit`` function; this
module runs Triton's own pipeline (ttir -> ttgir -> llir -> ptx -> cubin) for an explicit target and
returns a :class:`CompiledKernel`: the cubin bytes plus everything a launcher needs to call it
through the CUDA driver API without Triton (see ``esperc/runtime/cubin.py``).

The kernel parameter list is read back from the PTX entry, so the recorded layout is what the cubin
takes, including the trailing scratch pointers that Triton >= 3.3 appends (global scratch, then
profile scratch since 3.5). No integer is specialised implicitly: only the constexprs the caller
names are folded in, and ``tt.divisibility = 16`` is applied to exactly the arguments listed in
``divisible_by_16`` (the launcher checks that promise). See docs/dev/aot-notes.md.

Importing this module does not import Triton; :func:`compile_kernel` does.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import linecache
import os
import re
import struct
import sys
import tempfile
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

ELF_MAGIC = b"\x7fELF"

# Bytes of one kernel parameter of each Triton scalar type, as the CUDA ABI lays it out. Triton
# passes i1 as one byte and fp16/bf16 scalars as their 16-bit pattern.
SCALAR_BYTES: dict[str, int] = {
    "i1": 1,
    "i8": 1,
    "u8": 1,
    "i16": 2,
    "u16": 2,
    "fp16": 2,
    "bf16": 2,
    "i32": 4,
    "u32": 4,
    "fp32": 4,
    "i64": 8,
    "u64": 8,
    "fp64": 8,
}

_PTX_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(([^)]*)\)")
_PTX_PARAM = re.compile(r"\.param\s+(?:\.align\s+\d+\s+)?\.[a-z]+(\d+)[^,\[]*(?:\[(\d+)\])?")
_TARGET = re.compile(r"sm_(\d+)a?")


class AotCompileError(Exception):
    """A kernel could not be compiled to a cubin (bad spec, Triton or ptxas failure)."""


class ArgKind(enum.Enum):
    """What one kernel parameter of the cubin is."""

    POINTER = "pointer"  # a user argument of type "*<dtype>": a global-memory address
    SCALAR = "scalar"  # a user argument of a scalar type ("i32", "fp32", ...)
    GLOBAL_SCRATCH = "global_scratch"  # Triton >= 3.3: per-CTA global scratch, null if size 0
    PROFILE_SCRATCH = "profile_scratch"  # Triton >= 3.5: proton profile buffer, null if size 0


@dataclass(frozen=True, slots=True)
class KernelArg:
    """One parameter of the cubin's entry point, in launch order.

    Attributes:
        name: the kernel function's argument name, or "global_scratch"/"profile_scratch".
        type: Triton type string ("*bf16", "i32", "fp32"); "*i8" for the scratch pointers.
        kind: pointer, scalar, or which scratch buffer.
        nbytes: size of the parameter in the launch buffer (8 for pointers).
        divisible_by_16: compiled under ``tt.divisibility = 16`` (address or value % 16 == 0).
    """

    name: str
    type: str
    kind: ArgKind
    nbytes: int
    divisible_by_16: bool = False


@dataclass(frozen=True, slots=True)
class KernelSpec:
    """Everything that determines one cubin: the inputs of :func:`compile_kernel`.

    Attributes:
        source: Python source of a module defining ``kernel_name`` with ``@triton.jit``.
        kernel_name: name of the jit function in ``source``.
        signature: runtime argument name -> Triton type ("*fp32", "i32", "fp32", ...).
        constexprs: constexpr argument name -> value (int, float, bool or str).
        target: "sm_80", "sm_90" (the "a" suffix is implied for sm_90+ by Triton).
        num_warps: warps per CTA (power of two).
        num_stages: software-pipelining depth.
        num_ctas: CTAs per cluster (sm_90+).
        divisible_by_16: runtime arguments promised to be multiples of 16 (bytes for pointers).
        enable_fp_fusion: let ptxas fuse mul+add into fma; explicit because Triton's default
            changes across versions.
        options: further Triton backend options (e.g. {"maxnreg": 128}), passed through.
    """

    source: str
    kernel_name: str
    signature: Mapping[str, str]
    constexprs: Mapping[str, int | float | bool | str] = field(default_factory=dict)
    target: str = "sm_90"
    num_warps: int = 4
    num_stages: int = 3
    num_ctas: int = 1
    divisible_by_16: tuple[str, ...] = ()
    enable_fp_fusion: bool = True
    options: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CompiledKernel:
    """A cubin and the facts a driver-API launcher needs to run it.

    Attributes:
        cubin: the ELF image (starts with b"\\x7fELF").
        name: entry symbol in the cubin (``cuModuleGetFunction`` name).
        args: every parameter of the entry, in order, scratch pointers included.
        constexprs: the values folded in at compile time, sorted by name.
        target: e.g. "sm_90".
        triton_version: the Triton that produced the cubin.
        num_warps: warps per CTA; blockDim.x = 32 * num_warps.
        num_ctas: CTAs per cluster; gridDim.x = grid[0] * num_ctas.
        num_stages: pipelining depth used.
        shared: dynamic shared memory per CTA in bytes (``sharedMemBytes``).
        global_scratch_size: bytes of global scratch per CTA (0: pass null).
        global_scratch_align: alignment in bytes of that buffer.
        profile_scratch_size: bytes of profile scratch per CTA (0: pass null).
        profile_scratch_align: alignment in bytes of that buffer.
        launch_cooperative_grid: launch with CU_LAUNCH_ATTRIBUTE_COOPERATIVE.
        launch_pdl: launch with programmatic stream serialization (PDL).
        tmem_size: Blackwell tensor-memory columns, None where not used.
        n_regs: registers per thread read from the cubin's .nv.info, None if absent.
        frame_bytes: per-thread stack frame (spills live here), None if absent.
        ptx: the PTX text, kept for debugging and dumps.
    """

    cubin: bytes = field(repr=False)
    name: str
    args: tuple[KernelArg, ...]
    constexprs: tuple[tuple[str, int | float | bool | str], ...]
    target: str
    triton_version: str
    num_warps: int
    num_ctas: int
    num_stages: int
    shared: int
    global_scratch_size: int
    global_scratch_align: int
    profile_scratch_size: int
    profile_scratch_align: int
    launch_cooperative_grid: bool
    launch_pdl: bool
    tmem_size: int | None
    n_regs: int | None
    frame_bytes: int | None
    ptx: str = field(repr=False, compare=False)

    @property
    def user_args(self) -> tuple[KernelArg, ...]:
        """The parameters the caller supplies (the scratch pointers left out)."""
        return tuple(a for a in self.args if a.kind in (ArgKind.POINTER, ArgKind.SCALAR))


def parse_target(target: str) -> int:
    """Return the compute capability of "sm_90"/"sm_90a"/"sm_80" as an int (90, 80).

    Raises:
        AotCompileError: the string is not of that form.
    """
    match = _TARGET.fullmatch(target)
    if match is None:
        raise AotCompileError(f"target {target!r} is not of the form 'sm_<major><minor>'")
    return int(match.group(1))


def compile_kernel(spec: KernelSpec) -> CompiledKernel:
    """Compile one Triton kernel to a cubin with Triton's compiler; no GPU is needed.

    Triton's cache points into a private temporary directory and ``always_compile`` is set, so
    nothing is read from or left in ``~/.triton``; the same spec and Triton give the same bytes.

    Raises:
        AotCompileError: the spec is inconsistent, or Triton/ptxas fails.
    """
    capability = parse_target(spec.target)
    import triton

    with _interpreter_off(), tempfile.TemporaryDirectory(prefix="esperc-aot-") as tmp:
        try:
            fn = _load_kernel(spec.source, spec.kernel_name)
            arg_names = list(fn.arg_names)
            compiled = _run_triton(spec, fn, capability, Path(tmp))
        finally:
            linecache.cache.pop(_virtual_filename(spec.source, spec.kernel_name), None)
    return _to_compiled_kernel(spec, arg_names, compiled, triton.__version__)


@contextlib.contextmanager
def _interpreter_off() -> Iterator[None]:
    """Unset TRITON_INTERPRET for the compile: Triton reads it when @triton.jit decorates and
    while it lowers, and an AOT compile always wants the real compiler."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


def _run_triton(spec: KernelSpec, fn, capability: int, cache_dir: Path):  # -> triton's kernel
    """Run ``triton.compile`` with a private cache directory and no cache reads."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs = _triton_signature(spec, list(fn.arg_names))
    options = {
        **spec.options,
        "num_warps": spec.num_warps,
        "num_stages": spec.num_stages,
        "num_ctas": spec.num_ctas,
        "enable_fp_fusion": spec.enable_fp_fusion,
    }
    src = ASTSource(fn, signature, constexprs=dict(spec.constexprs), attrs=attrs)
    with knobs.cache.scope(), knobs.compilation.scope():
        knobs.cache.dir = str(cache_dir)
        knobs.compilation.always_compile = True
        knobs.compilation.override = False
        knobs.compilation.dump_ir = False
        try:
            return triton.compile(src, target=GPUTarget("cuda", capability, 32), options=options)
        except Exception as exc:  # Triton raises many unrelated types; keep the cause
            raise AotCompileError(f"kernel {spec.kernel_name!r}: {exc}") from exc


def compile_many(
    specs: Sequence[KernelSpec], max_workers: int | None = None
) -> list[CompiledKernel]:
    """Compile several kernels in a pool of fresh ("spawn") processes, results in input order.

    Raises:
        AotCompileError: the first spec that failed, in input order.
    """
    if len(specs) <= 1:
        return [compile_kernel(s) for s in specs]
    with ProcessPoolExecutor(max_workers=max_workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(compile_kernel, specs))


def _load_kernel(source: str, kernel_name: str):  # -> triton.runtime.JITFunction
    """Execute ``source`` as a module and return its jit function ``kernel_name``.

    The source is registered in ``linecache`` under a name derived from its hash, which is where
    ``inspect.getsource`` (used by Triton) finds it; the caller removes that entry. A file path
    would end up in the cubin's line table and make the bytes differ from run to run.
    """
    from triton.runtime.jit import JITFunction

    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    filename = _virtual_filename(source, kernel_name)
    module = types.ModuleType(f"_esperc_aot_{digest}")
    module.__file__ = filename
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    sys.modules[module.__name__] = module  # dataclasses/typing in the source may look it up
    try:
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 (our own codegen)
    except Exception as exc:
        raise AotCompileError(f"kernel source does not import: {exc}") from exc
    finally:
        del sys.modules[module.__name__]
    fn = module.__dict__.get(kernel_name)
    if not isinstance(fn, JITFunction):
        raise AotCompileError(f"source defines no @triton.jit function named {kernel_name!r}")
    return fn


def _virtual_filename(source: str, kernel_name: str) -> str:
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return f"esperc_kernels/{kernel_name}_{digest}.py"


def _triton_signature(
    spec: KernelSpec, arg_names: list[str]
) -> tuple[dict[str, str], dict[tuple[int], list[list[object]]]]:
    """Build Triton's full signature (constexprs as "constexpr") and divisibility attributes."""
    unknown = (set(spec.signature) | set(spec.constexprs)) - set(arg_names)
    if unknown:
        raise AotCompileError(f"{spec.kernel_name}: no parameters named {sorted(unknown)}")
    both = set(spec.signature) & set(spec.constexprs)
    if both:
        raise AotCompileError(f"{spec.kernel_name}: {sorted(both)} both runtime and constexpr")
    missing = [n for n in arg_names if n not in spec.signature and n not in spec.constexprs]
    if missing:
        raise AotCompileError(f"{spec.kernel_name}: no type or constexpr value for {missing}")
    bad_div = set(spec.divisible_by_16) - set(spec.signature)
    if bad_div:
        raise AotCompileError(f"{spec.kernel_name}: divisible_by_16 names {sorted(bad_div)}")
    for name, ty in spec.signature.items():
        if not ty.startswith("*") and ty not in SCALAR_BYTES:
            raise AotCompileError(f"{spec.kernel_name}: unsupported type {ty!r} for {name!r}")
    signature = {n: spec.signature.get(n, "constexpr") for n in arg_names}
    attrs = {(arg_names.index(n),): [["tt.divisibility", 16]] for n in sorted(spec.divisible_by_16)}
    return signature, attrs


def _to_compiled_kernel(
    spec: KernelSpec, arg_names: list[str], compiled, version: str
) -> CompiledKernel:
    """Turn Triton's CompiledKernel into ours, checking the layout against the PTX entry."""
    meta = compiled.metadata
    ptx = compiled.asm["ptx"]
    cubin = bytes(compiled.asm["cubin"])
    args = _arg_layout(spec, arg_names, ptx, meta.name)
    n_regs, frame_bytes = cubin_resource_usage(cubin, meta.name)
    return CompiledKernel(
        cubin=cubin,
        name=meta.name,
        args=args,
        constexprs=tuple(sorted(spec.constexprs.items())),
        target=f"sm_{parse_target(spec.target)}",
        triton_version=version,
        num_warps=meta.num_warps,
        num_ctas=meta.num_ctas,
        num_stages=meta.num_stages,
        shared=meta.shared,
        global_scratch_size=meta.global_scratch_size or 0,
        global_scratch_align=meta.global_scratch_align or 1,
        profile_scratch_size=meta.profile_scratch_size or 0,
        profile_scratch_align=meta.profile_scratch_align or 1,
        launch_cooperative_grid=bool(meta.launch_cooperative_grid),
        launch_pdl=bool(meta.launch_pdl),
        tmem_size=meta.tmem_size,
        n_regs=n_regs,
        frame_bytes=frame_bytes,
        ptx=ptx,
    )


def _arg_layout(
    spec: KernelSpec, arg_names: list[str], ptx: str, name: str
) -> tuple[KernelArg, ...]:
    """Runtime arguments in order, then as many scratch pointers as the PTX entry has left over."""
    entry = next((m for m in _PTX_ENTRY.finditer(ptx) if m.group(1) == name), None)
    if entry is None:
        raise AotCompileError(f"no PTX entry {name!r} in the compiled kernel")
    params = _PTX_PARAM.findall(entry.group(2))
    widths = [int(bits) // 8 * int(count or 1) for bits, count in params]
    divisible = set(spec.divisible_by_16)
    args = [
        KernelArg(
            name=n,
            type=ty,
            kind=ArgKind.POINTER if ty.startswith("*") else ArgKind.SCALAR,
            nbytes=8 if ty.startswith("*") else SCALAR_BYTES[ty],
            divisible_by_16=n in divisible,
        )
        for n in arg_names  # the cubin follows the function's order, not the signature dict's
        if (ty := spec.signature.get(n)) is not None
    ]
    extra = len(widths) - len(args)
    scratch = [ArgKind.GLOBAL_SCRATCH, ArgKind.PROFILE_SCRATCH][: max(extra, 0)]
    args += [KernelArg(k.value, "*i8", k, 8) for k in scratch]
    if extra not in (0, 1, 2) or [a.nbytes for a in args] != widths:
        raise AotCompileError(
            f"{name}: PTX parameters {widths} (bytes) do not match the arguments "
            f"{[(a.name, a.type) for a in args]}"
        )
    return tuple(args)


# --- reading resource usage back from the cubin (ELF64, little endian) ---------------------------

_EIATTR_FRAME_SIZE = 0x11
_EIATTR_REGCOUNT = 0x2F
_EIFMT_NVAL, _EIFMT_BVAL, _EIFMT_HVAL, _EIFMT_SVAL = 1, 2, 3, 4


def cubin_resource_usage(cubin: bytes, name: str) -> tuple[int | None, int | None]:
    """Return (registers per thread, stack frame bytes per thread) of entry ``name``.

    Reads the EIATTR_REGCOUNT and EIATTR_FRAME_SIZE records of the cubin's ``.nv.info``
    sections (the values ``cuobjdump -res-usage`` prints as REG and STACK). None when absent.

    Raises:
        AotCompileError: ``cubin`` is not an ELF64 image.
    """
    if cubin[:4] != ELF_MAGIC or cubin[4] != 2:
        raise AotCompileError("cubin is not an ELF64 image")
    sections = _elf_sections(cubin)
    symtab = sections.get(".symtab")
    strtab = sections.get(".strtab")
    if symtab is None or strtab is None:
        return None, None
    sym_index = None
    for i in range(len(symtab) // 24):
        st_name = struct.unpack_from("<I", symtab, i * 24)[0]
        if _cstr(strtab, st_name) == name:
            sym_index = i
    regs = frame = None
    for section_name, data in sections.items():
        if not section_name.startswith(".nv.info"):
            continue
        for attr, payload in _nv_info_records(data):
            if len(payload) != 8 or struct.unpack_from("<I", payload)[0] != sym_index:
                continue
            value = struct.unpack_from("<I", payload, 4)[0]
            if attr == _EIATTR_REGCOUNT:
                regs = value
            elif attr == _EIATTR_FRAME_SIZE:
                frame = value
    return regs, frame


def _elf_sections(elf: bytes) -> dict[str, bytes]:
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx]
    names_data = elf[names[4] : names[4] + names[5]]
    return {_cstr(names_data, h[0]): elf[h[4] : h[4] + h[5]] if h[1] != 8 else b"" for h in headers}


def _nv_info_records(data: bytes) -> Iterable[tuple[int, bytes]]:
    offset = 0
    while offset + 2 <= len(data):
        fmt, attr = data[offset], data[offset + 1]
        if fmt == _EIFMT_SVAL:
            size = struct.unpack_from("<H", data, offset + 2)[0]
            yield attr, data[offset + 4 : offset + 4 + size]
            offset += 4 + size
        elif fmt in (_EIFMT_HVAL, _EIFMT_BVAL):
            offset += 4
        else:  # _EIFMT_NVAL: attribute without a value
            offset += 2


def _cstr(data: bytes, start: int) -> str:
    return data[start : data.index(b"\0", start)].decode()
