"""Small shared pieces of Triton code generation: names, dtypes, dims as Python, source writer.

Nothing here imports Triton: code generation produces text, so it runs (and is tested) on a
machine without Triton's compiler stack.
"""

from __future__ import annotations

import keyword
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from esperc.diagnostics import Loc
from esperc.ir.types import Dim, DType, SymDim

INT32_MAX = 2**31 - 1


class CodegenError(Exception):
    """The backend cannot lower a region (an esperc bug or an unsupported region shape)."""


# Triton element types, by IR dtype: the pointer and the register (compute) type.
TRITON_DTYPE = {
    DType.F16: "fp16",
    DType.BF16: "bf16",
    DType.F32: "fp32",
    DType.I32: "i32",
    DType.I64: "i64",
    DType.BOOL: "i1",
}
# Floats are computed in fp32 registers whatever their storage type; rounding happens at stores
# and at explicit casts (as PyTorch's fused kernels do for bf16/f16 math).
REG_DTYPE = {
    DType.F16: "tl.float32",
    DType.BF16: "tl.float32",
    DType.F32: "tl.float32",
    DType.I32: "tl.int32",
    DType.I64: "tl.int64",
    DType.BOOL: "tl.int1",
}
STORE_DTYPE = {
    DType.F16: "tl.float16",
    DType.BF16: "tl.bfloat16",
    DType.F32: "tl.float32",
    DType.I32: "tl.int32",
    DType.I64: "tl.int64",
    DType.BOOL: "tl.int1",
}

_RESERVED = frozenset(
    {"tl", "triton", "float", "int", "range", "min", "max", "pid", "pid_m", "pid_n", "rows", "cols",
     "offs", "rmask", "cmask", "mask", "acc", "z", "rm", "rn", "rk", "k", "off", "None", "True",
     "False", "len", "print", "abs"}
)  # fmt: skip


def sanitize(name: str) -> str:
    """A Python identifier for an IR value name: ``y.1`` -> ``y_1``, ``3`` -> ``v3``."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not s or s[0].isdigit():
        s = "v" + s
    return s


@dataclass
class Namer:
    """Unique Python identifiers inside one kernel, avoiding keywords and internal names."""

    used: set[str] = field(default_factory=lambda: set(_RESERVED))
    names: dict[str, str] = field(default_factory=dict)

    def fresh(self, base: str) -> str:
        s = sanitize(base)
        cand, i = s, 1
        while cand in self.used or keyword.iskeyword(cand):
            cand = f"{s}_{i}"
            i += 1
        self.used.add(cand)
        return cand

    def value(self, ir_name: str) -> str:
        """The register variable of IR value ``ir_name`` (stable across calls)."""
        if ir_name not in self.names:
            self.names[ir_name] = self.fresh(ir_name)
        return self.names[ir_name]


def dim_py(d: Dim, dim_names: Mapping[str, str], atom: bool = True) -> str:
    """A dimension as a Python expression over the kernel's dim parameters (``B*S``),
    parenthesised when compound unless ``atom=False``."""
    if isinstance(d, int):
        return str(d) if d >= 0 or not atom else f"({d})"
    text = _poly_py(d, dim_names)
    return f"({text})" if atom and not text.isidentifier() else text


def _poly_py(d: SymDim, dim_names: Mapping[str, str]) -> str:
    parts: list[str] = []
    for mono, coef in d.terms:
        factors = [dim_names[s] for s in mono]
        if abs(coef) != 1 or not factors:
            factors.insert(0, str(abs(coef)))
        text = "*".join(factors)
        parts.append(("-" if coef < 0 else ("+" if parts else "")) + text)
    return "".join(parts)


def dim_symbols(dims: Sequence[Dim]) -> list[str]:
    """Dynamic dim names used by ``dims``, sorted."""
    out: set[str] = set()
    for d in dims:
        if isinstance(d, SymDim):
            out |= d.symbols
    return sorted(out)


def prod(dims: Sequence[Dim]) -> Dim:
    total: Dim = 1
    for d in dims:
        total = d * total if isinstance(d, SymDim) else total * d
    return total


def dim_max(d: Dim, his: Mapping[str, int]) -> int:
    """Upper bound of a dim (its polynomial with every symbol at its range's maximum)."""
    if isinstance(d, int):
        return d
    return sum(
        coef * _prod_int(his.get(s, INT32_MAX) for s in mono) for mono, coef in d.terms if coef > 0
    )


def _prod_int(xs) -> int:  # noqa: ANN001 - tiny local helper
    out = 1
    for x in xs:
        out *= x
    return out


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def float_literal(v: float) -> str:
    if v != v:
        return 'float("nan")'
    if v in (float("inf"), float("-inf")):
        return 'float("inf")' if v > 0 else 'float("-inf")'
    return repr(float(v))


@dataclass
class Writer:
    """Indented Python source lines, with one ``# file:line  text`` comment per source line."""

    sources: Mapping[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    indent: int = 1
    last_loc: tuple[str, int] | None = None

    def __call__(self, line: str) -> None:
        self.lines.append("    " * self.indent + line if line else "")

    def comment_loc(self, loc: Loc | None) -> None:
        """Point back to the blueprint source line of the code that follows (once per line)."""
        if loc is None or (loc.file, loc.line) == self.last_loc or loc.file.startswith("<"):
            return
        self.last_loc = (loc.file, loc.line)
        base = os.path.basename(loc.file)
        text = ""
        src = self.sources.get(loc.file)
        if src is not None:
            src_lines = src.splitlines()
            if 0 < loc.line <= len(src_lines):
                text = "  " + src_lines[loc.line - 1].split("#")[0].strip()
        self(f"# {base}:{loc.line}{text}".rstrip())

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def kernel_header(name: str, runtime: list[str], constexprs: list[str], doc: str) -> list[str]:
    """``@triton.jit`` and the ``def`` line(s) of a kernel, wrapped at 100 columns."""
    params = runtime + [f"{c}: tl.constexpr" for c in constexprs]
    one = f"def {name}({', '.join(params)}):"
    out = ["@triton.jit"]
    if len(one) <= 100:
        out.append(one)
    else:
        out.append(f"def {name}(")
        line = "    "
        for p in params:
            if len(line) + len(p) + 2 > 100:
                out.append(line.rstrip())
                line = "    "
            line += p + ", "
        out.append(line.rstrip())
        out.append("):")
    out.append(f'    """{doc}"""')
    return out
