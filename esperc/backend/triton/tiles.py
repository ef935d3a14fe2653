"""Row/column tiles: addressing of broadcast and strided operands, and the statement emitter.

Every elementwise, reduction and matmul-epilogue kernel works on a *domain* shape split into
``lead`` dims (flattened into rows) and ``inner`` dims (flattened into columns, contiguous in
memory). A program holds a ``[BLOCK_M, BLOCK_N]`` tile; a value is held in registers with the
smallest shape its broadcasting needs (its ``Cls``): ``[BLOCK_M, BLOCK_N]``, ``[BLOCK_M, 1]``
(per-row: row statistics, ``[R, 1]`` inputs), ``[1, BLOCK_N]`` (rank-1 weights) or a scalar. So a
``[D]`` weight is loaded once per program, not once per row, and column offsets keep unit stride
(16-byte vector loads). A *flat* space has no rows: one ``[BLOCK_N]`` vector over all elements.

Operand offsets follow NumPy broadcasting: a leading dim of size 1 gets stride 0; other leading
dims are recovered from the row index by ``//`` and ``%`` only when the operand's leading shape
differs from the domain's (per row, not per element).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from esperc.backend.triton.common import (
    REG_DTYPE,
    STORE_DTYPE,
    CodegenError,
    Namer,
    Writer,
    dim_py,
    prod,
)
from esperc.backend.triton.lowering import (
    LOWERING,
    Elementwise,
    Operand,
    Reduction,
    Template,
    literal,
)
from esperc.ir.graph import Node
from esperc.ir.ops import Op
from esperc.ir.types import Dim, DType, TensorType


@dataclass(frozen=True, slots=True)
class View:
    """How a kernel reads a tensor: pointer parameter, shape, element strides and offset.

    ``strides=None`` means contiguous for ``shape``. Views of region inputs (reshape, transpose,
    permute, broadcast_to, slice inside a kernel region) only change these numbers.
    """

    param: str
    dtype: DType
    shape: tuple[Dim, ...]
    strides: tuple[Dim, ...] | None = None
    offset: Dim = 0

    def stride_list(self) -> tuple[Dim, ...]:
        if self.strides is not None:
            return self.strides
        return contiguous_strides(self.shape)


def contiguous_strides(shape: Sequence[Dim]) -> tuple[Dim, ...]:
    out: list[Dim] = []
    acc: Dim = 1
    for d in reversed(shape):
        out.append(1 if d == 1 else acc)
        acc = d * acc if not isinstance(acc, int) else (acc * d if isinstance(d, int) else d * acc)
    return tuple(reversed(out))


@dataclass(frozen=True, slots=True)
class Cls:
    """Which tile axes a register value varies along."""

    row: bool
    col: bool

    def __or__(self, other: Cls) -> Cls:
        return Cls(self.row or other.row, self.col or other.col)


SCALAR = Cls(False, False)


@dataclass
class TileSpace:
    """The index space of one kernel and the names of its index/mask variables."""

    lead: tuple[Dim, ...]
    inner: tuple[Dim, ...]
    dim_names: Mapping[str, str]
    flat: bool = False
    rows: str = "rows"
    cols: str = "cols"
    rmask: str | None = "rmask"
    cmask: str | None = "cmask"
    full_mask: str | None = None  # a variable holding rmask[:, None] & cmask[None, :]

    @property
    def rank(self) -> int:
        return len(self.lead) + len(self.inner)

    def py(self, d: Dim) -> str:
        return dim_py(d, self.dim_names)

    def split(self, shape: Sequence[Dim]) -> tuple[tuple[Dim, ...], tuple[Dim, ...]]:
        if len(shape) > self.rank:
            raise CodegenError(f"shape {list(shape)} has more axes than the kernel's domain")
        padded = (1,) * (self.rank - len(shape)) + tuple(shape)
        return padded[: len(self.lead)], padded[len(self.lead) :]

    def cls_of(self, shape: Sequence[Dim]) -> Cls:
        lead, inner = self.split(shape)
        col = any(d != 1 for d in inner)
        if col and inner != self.inner:
            raise CodegenError(
                f"shape {list(shape)} broadcasts inside the contiguous axes {list(self.inner)}"
            )
        return Cls(any(d != 1 for d in lead), col)

    def shape_of(self, c: Cls) -> str:
        if self.flat:
            return "(BLOCK_N,)" if c.col else "()"
        return f"({'BLOCK_M' if c.row else 1}, {'BLOCK_N' if c.col else 1})"

    def row_index(self, k: int) -> str:
        """Index along leading axis ``k`` of each row, a ``[BLOCK_M]`` expression."""
        inner = prod(self.lead[k + 1 :])
        e = self.rows if inner == 1 else f"({self.rows} // {self.py(inner)})"
        return f"({e} % {self.py(self.lead[k])})" if k > 0 else e

    def col_index(self, k: int) -> str:
        inner = prod(self.inner[k + 1 :])
        e = self.cols if inner == 1 else f"({self.cols} // {self.py(inner)})"
        return f"({e} % {self.py(self.inner[k])})" if k > 0 else e

    def offsets(self, view: View) -> tuple[str, Cls]:
        """Element offsets of ``view`` for this program's tile, and the tile's class."""
        lead, inner = self.split(view.shape)
        strides = (0,) * (self.rank - len(view.shape)) + view.stride_list()
        lstr, istr = strides[: len(lead)], strides[len(lead) :]
        c = self.cls_of(view.shape)
        contiguous = view.strides is None or view.strides == contiguous_strides(view.shape)
        row_parts: list[str] = []
        if c.row:
            if lead == self.lead and contiguous:
                row_parts.append(_mul(self.rows, self.py(prod(inner))))
            else:
                for k, (d, s) in enumerate(zip(lead, lstr)):
                    if d != 1:
                        row_parts.append(_mul(self.row_index(k), self.py(s)))
        col_part = ""
        if c.col:
            if contiguous or istr == contiguous_strides(inner):
                col_part = self.cols
            elif len(inner) == 1:
                col_part = _mul(self.cols, self.py(istr[0]))
            else:
                raise CodegenError(f"strided view {view} over several contiguous axes")
        row_parts = [p for p in row_parts if p != "0"]  # stride-0 axes (broadcast views) do not
        col_part = "" if col_part == "0" else col_part  # vary: the tile's class drops them
        c = Cls(c.row and bool(row_parts), c.col and bool(col_part))
        parts = []
        if view.offset != 0:
            parts.append(self.py(view.offset))
        if self.flat:
            parts += row_parts + ([col_part] if col_part else [])
            return " + ".join(parts) if parts else "0", c
        if row_parts:
            parts.append(f"({' + '.join(row_parts)})[:, None]")
        if col_part:
            parts.append(f"{col_part}[None, :]")
        return (" + ".join(parts) if parts else "0"), c

    def mask(self, c: Cls) -> str | None:
        if self.flat:
            return self.cmask if c.col else None
        if c.row and c.col and self.full_mask:
            return self.full_mask
        parts = []
        if c.row and self.rmask:
            parts.append(f"{self.rmask}[:, None]")
        if c.col and self.cmask:
            parts.append(f"{self.cmask}[None, :]")
        return " & ".join(parts) or None


def _mul(a: str, b: str) -> str:
    if b == "1":
        return a
    if b == "0":
        return "0"
    return f"{a} * {b}"


@dataclass(frozen=True, slots=True)
class TVal:
    """A value in registers: a variable name (or literal), its class and its IR dtype."""

    expr: str
    cls: Cls
    dtype: DType
    literal: object = None


@dataclass
class TileEmitter:
    """Emits one statement per IR node over tiles of a ``TileSpace``.

    Region inputs are loaded lazily, at their first use, in the scope (loop body, branch) of that
    use; ``scope()`` forgets values defined inside it when it closes.
    """

    space: TileSpace
    namer: Namer
    w: Writer
    views: Mapping[str, View]
    types: Mapping[str, TensorType]
    consts: Mapping[str, Node]
    vals: dict[str, TVal] = field(default_factory=dict)
    reduce_hook: Callable[[Node], TVal] | None = None
    consumed: set[str] = field(default_factory=set)  # values some member reads (not only stored)

    @contextmanager
    def scope(self) -> Iterator[None]:
        saved = dict(self.vals)
        self.w.indent += 1
        try:
            yield
        finally:
            self.w.indent -= 1
            self.vals = saved

    def bind(self, name: str, val: TVal) -> None:
        self.vals[name] = val

    def value(self, name: str) -> TVal:
        if name in self.vals:
            return self.vals[name]
        if name in self.consts:
            n = self.consts[name]
            dt = DType(n.attr("dtype"))
            return TVal(literal(n.attr("value"), dt), SCALAR, dt, n.attr("value"))
        if name in self.views:
            return self.load(name)
        raise CodegenError(f"%{name} is not available in this kernel")

    def load(self, name: str) -> TVal:
        view = self.views[name]
        off, c = self.space.offsets(view)
        off = self.shared(off)
        mask = self.space.mask(c)
        var = self.namer.value(name)
        ptr = f"{view.param} + {off}" if off != "0" else view.param
        if mask is None:
            text = f"tl.load({ptr})"
        else:
            other = "0.0" if view.dtype.is_float else "0"
            text = f"tl.load({ptr}, mask={mask}, other={other})"
        if view.dtype in (DType.BF16, DType.F16):
            text += ".to(tl.float32)"
        self.w(f"{var} = {text}")
        val = TVal(var, c, view.dtype)
        self.vals[name] = val
        return val

    def shared(self, off: str) -> str:
        """A variable for a tile offset expression used by several loads/stores of a scope."""
        if " + " not in off:
            return off
        key = "__off:" + off
        if key not in self.vals:
            var = self.namer.fresh("offs")
            self.w(f"{var} = {off}")
            self.vals[key] = TVal(var, SCALAR, DType.I32)
        return self.vals[key].expr

    def operands(self, node: Node) -> list[Operand]:
        out = []
        for o in node.operands:
            v = self.value(o)
            out.append(Operand(v.expr, v.dtype, v.literal))
        return out

    def emit(self, node: Node) -> TVal:
        """Emit ``node`` (an elementwise op, index or constant) and bind its result."""
        low = LOWERING[node.op]
        if node.op is not Op.CONSTANT:  # constants are inlined: no code to point from
            self.w.comment_loc(node.loc)
        var = self.namer.value(node.result)
        if isinstance(low, Template) and low.template == "constant":
            val = self.value(node.result) if node.result in self.consts else None
            if val is None:
                dt = DType(node.attr("dtype"))
                val = TVal(literal(node.attr("value"), dt), SCALAR, dt, node.attr("value"))
            self.vals[node.result] = val
            return val
        if isinstance(low, Template) and low.template == "index":
            return self._index(node, var)
        if node.op is Op.BROADCAST_TO:  # a register tile broadcasts where it is used
            src = self.value(node.operands[0])
            val = TVal(src.expr, src.cls, node.type.dtype, src.literal)
            self.vals[node.result] = val
            return val
        if isinstance(low, Reduction) and self.reduce_hook is not None:
            return self.reduce_hook(node)
        if not isinstance(low, Elementwise):
            raise CodegenError(f"%{node.result} = {node.op} is not an elementwise op")
        if node.op is Op.CAST and self._alias_cast(node):
            return self.vals[node.result]
        ops = self.operands(node)
        expr = low.emit(ops, node)
        c = SCALAR
        for o in node.operands:
            c = c | self.value(o).cls
        self.w(f"{var} = {expr}")
        val = TVal(var, c, node.type.dtype)
        self.vals[node.result] = val
        return val

    def _alias_cast(self, node: Node) -> bool:
        """Float casts that need no instruction: widening (registers are fp32 already), and
        narrowing of a value that is only stored (the store rounds). Binds the operand's value."""
        src = self.value(node.operands[0])
        dst = node.type.dtype
        if not (src.dtype.is_float and dst.is_float):
            return False
        narrowing = dst.itemsize < src.dtype.itemsize or {dst, src.dtype} == {DType.BF16, DType.F16}
        if narrowing and node.result in self.consumed:
            return False
        self.vals[node.result] = TVal(src.expr, src.cls, dst, src.literal)
        return True

    def _index(self, node: Node, var: str) -> TVal:
        src = self.types[node.operands[0]]
        axis = node.attr("axis") % src.rank
        pos = axis + self.space.rank - src.rank
        nlead = len(self.space.lead)
        if pos < nlead:
            self.w(
                f"{var} = {self.space.row_index(pos)}" + ("" if self.space.flat else "[:, None]")
            )
            c = Cls(True, False)
        else:
            idx = self.space.col_index(pos - nlead)
            self.w(f"{var} = {idx}" + ("" if self.space.flat else "[None, :]"))
            c = Cls(False, True)
        val = TVal(var, c, node.type.dtype)
        self.vals[node.result] = val
        return val

    def broadcast(self, val: TVal, c: Cls) -> str:
        """``val`` as an expression of exactly class ``c`` (for branch joins and stores)."""
        if val.cls == c and val.literal is None:
            return val.expr
        if val.literal is not None:
            return f"tl.full({self.space.shape_of(c)}, {val.expr}, {REG_DTYPE[val.dtype]})"
        return f"tl.broadcast_to({val.expr}, {self.space.shape_of(c)})"

    def store(self, name: str, view: View, extra_mask: str | None = None) -> None:
        """Store value ``name`` through ``view`` (converted to the pointer's element type)."""
        val = self.value(name)
        off, c = self.space.offsets(view)
        off = self.shared(off)
        mask = self.space.mask(c)
        if not self.space.flat and (val.cls.row > c.row or val.cls.col > c.col):
            # the value varies along an axis the output does not have: write its first element
            wide = c | val.cls
            off = f"{off} + tl.zeros({self.space.shape_of(wide)}, tl.int32)"
            firsts = [f"({self.space.rows} == 0)[:, None]"] if val.cls.row > c.row else []
            firsts += [f"({self.space.cols} == 0)[None, :]"] if val.cls.col > c.col else []
            extra_mask = " & ".join(firsts + ([extra_mask] if extra_mask else []))
            mask = self.space.mask(wide)
            c = wide
        if extra_mask:
            mask = f"({mask}) & ({extra_mask})" if mask else extra_mask
        expr = self.broadcast(val, c) if (val.cls != c or val.literal is not None) else val.expr
        ptr = f"{view.param} + {off}" if off != "0" else view.param
        if val.dtype is not view.dtype or view.dtype in (DType.BF16, DType.F16):
            expr = f"{expr}.to({STORE_DTYPE[view.dtype]})"
        m = f", mask={mask}" if mask else ""
        self.w(f"tl.store({ptr}, {expr}{m})")

    # --- uniform branches ------------------------------------------------------------------

    def emit_all(self, nodes: Sequence[Node], keep: set[str], branches: bool = True) -> None:
        """Emit ``nodes`` in order; a ``select`` on a scalar flag becomes ``if flag:``/``else:``
        with the nodes only one side needs moved inside it (``keep``: values used afterwards)."""
        self.consumed |= {o for n in nodes for o in n.operands}
        scope = _branch_scopes(nodes, keep, self.types) if branches else {}
        done: set[str] = set()
        for n in nodes:
            if n.result in done or scope.get(n.result) is not None:
                continue
            if n.op is Op.SELECT and branches and self.types[n.operands[0]].rank == 0:
                self._emit_branch(n, nodes, scope)
            elif isinstance(LOWERING[n.op], Elementwise | Template | Reduction):
                self.emit(n)
            else:
                raise CodegenError(f"%{n.result} = {n.op} cannot be emitted here")
            done.add(n.result)

    def _emit_branch(self, sel: Node, nodes: Sequence[Node], scope: Mapping) -> None:
        cond = self.value(sel.operands[0])
        self.w.comment_loc(sel.loc)
        var = self.namer.value(sel.result)
        c = self.space.cls_of(sel.type.shape)
        # inputs both sides read are loaded once, before the branch
        reads = []
        for side, operand in (("then", sel.operands[1]), ("else", sel.operands[2])):
            names = {operand} | {
                o for n in nodes if scope.get(n.result) == (sel.result, side) for o in n.operands
            }
            reads.append({x for x in names if x in self.views and x not in self.vals})
        for name in sorted(reads[0] & reads[1]):
            self.load(name)
        for side, operand in (("then", sel.operands[1]), ("else", sel.operands[2])):
            self.w(f"if {cond.expr}:" if side == "then" else "else:")
            with self.scope():
                for n in nodes:
                    if scope.get(n.result) == (sel.result, side):
                        self.emit(n)
                # both sides assign one variable of one type, as scf.if requires
                self.w(f"{var} = {self.broadcast(self.value(operand), c)}")
        self.vals[sel.result] = TVal(var, c, sel.type.dtype)


def _branch_scopes(
    nodes: Sequence[Node], keep: set[str], types: Mapping[str, TensorType]
) -> dict[str, tuple[str, str] | None]:
    """For each node: ``(select, side)`` when only that side of a top-level uniform select
    needs it, else None (computed before the branch)."""
    users: dict[str, list[tuple[Node, int]]] = {}
    for n in nodes:
        for i, o in enumerate(n.operands):
            users.setdefault(o, []).append((n, i))
    scope: dict[str, tuple[str, str] | None] = {}
    for n in reversed(nodes):
        ctxs: set[tuple[str, str] | None] = set()
        if n.result in keep:
            ctxs.add(None)
        for u, i in users.get(n.result, []):
            if u.op is Op.SELECT and types[u.operands[0]].rank == 0 and scope[u.result] is None:
                ctxs.add(None if i == 0 else (u.result, "then" if i == 1 else "else"))
            else:
                ctxs.add(scope[u.result])
        scope[n.result] = ctxs.pop() if len(ctxs) == 1 else None
    return scope
