"""Tests of the ``divergence`` pass: classes, lowering, and tile counts vs a brute-force count.

The oracle for tile counts evaluates the mask with torch on every element of every tile (edge
tiles clipped for sizes that are not multiples of the tile) and counts all-true, all-false and
mixed tiles; it shares no code with ``fusion_masks``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from esperc.ir.builder import Builder
from esperc.ir.graph import Func
from esperc.ir.ops import Op
from esperc.ir.types import DType, SymDim, TensorType
from esperc.middle.pass_manager import PassContext, parse_pipeline, run_pipeline
from esperc.middle.registry import load_passes

PASSES = load_passes()
Mask = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (row, col) -> bool


def _attention(rows: int | None, cols: int, build_mask: str) -> Func:
    """Attention over an [R, C] score matrix (R dynamic when ``rows`` is None) with a mask."""
    b = Builder("att")
    if rows is None:
        b.add_dim("S", 1, 16384)
        rows_dim: int | SymDim = SymDim.symbol("S")
    else:
        rows_dim = rows
    q = b.add_arg("q", TensorType(DType.F32, (rows_dim, 16)), "input")
    k = b.add_arg("k", TensorType(DType.F32, (cols, 16)), "input")
    v = b.add_arg("v", TensorType(DType.F32, (cols, 16)), "input")
    kt = b.emit(Op.TRANSPOSE, [k], {"dim0": 0, "dim1": 1})
    s = b.emit(Op.MATMUL, [q, kt])
    row = b.emit(Op.INDEX, [s], {"axis": 0})
    col = b.emit(Op.INDEX, [s], {"axis": 1})
    cond = _MASKS[build_mask][0](b, row, col)
    ninf = b.constant(float("-inf"), DType.F32)
    w = b.emit(Op.WHERE, [cond, s, ninf])
    p = b.emit(Op.SOFTMAX, [w], {"axis": 1})
    return b.finish([b.emit(Op.MATMUL, [p, v])])


def _causal(b: Builder, row: str, col: str) -> str:
    return b.emit(Op.LE, [col, row])


def _band(b: Builder, row: str, col: str) -> str:
    """Sliding window of 100: row - 100 < col <= row."""
    lo = b.emit(Op.SUB, [row, b.constant(100, DType.I64)])
    return b.emit(Op.LOGICAL_AND, [b.emit(Op.LE, [col, row]), b.emit(Op.GT, [col, lo])])


def _shifted(b: Builder, row: str, col: str) -> str:
    """2*col >= row + 7 (an affine form with coefficients other than 1)."""
    two_col = b.emit(Op.MUL, [col, b.constant(2, DType.I64)])
    return b.emit(Op.GE, [two_col, b.emit(Op.ADD, [row, b.constant(7, DType.I64)])])


def _diagonal(b: Builder, row: str, col: str) -> str:
    """Even diagonals only: an equality on a lattice, decided per element on mixed tiles."""
    return b.emit(Op.EQ, [b.emit(Op.MUL, [col, b.constant(2, DType.I64)]), row])


_MASKS: dict[str, tuple[Callable[[Builder, str, str], str], Mask]] = {
    "causal": (_causal, lambda r, c: c <= r),
    "band": (_band, lambda r, c: (c <= r) & (c > r - 100)),
    "shifted": (_shifted, lambda r, c: 2 * c >= r + 7),
    "diagonal": (_diagonal, lambda r, c: 2 * c == r),
}


def brute_force(mask: Mask, rows: int, cols: int, tm: int, tn: int) -> dict[str, int]:
    """Counts per tile from the full boolean mask (torch, every element)."""
    r = torch.arange(rows).view(-1, 1)
    c = torch.arange(cols).view(1, -1)
    full = mask(r, c).expand(rows, cols)
    total = mixed = false = 0
    for i in range(0, rows, tm):
        for j in range(0, cols, tn):
            t = full[i : i + tm, j : j + tn]
            total += 1
            if not t.any():
                false += 1
            elif not t.all():
                mixed += 1
    return {"tiles_total": total, "tiles_visited": total - false, "tiles_mixed": mixed,
            "tiles_skipped": false}  # fmt: skip


def _analyse(func: Func, tile: str = "64x64", nominal: int = 1024) -> dict[str, object]:
    ctx = PassContext()
    out = run_pipeline(
        func, parse_pipeline(f"fuse,divergence{{tile={tile},nominal={nominal}}}", PASSES), ctx
    )
    (r,) = [r for r in out.regions if r.attr("divergence") is not None]
    return dict(r.attrs)


def test_causal_1024_example() -> None:
    """The documented example: 256 tiles, 136 visited, 120 skipped, 16 mixed, 120 unmasked."""
    a = _analyse(_attention(None, 1024, "causal"))
    assert a["kind"] == "attention" and a["divergence"] == "index-affine"
    assert a["lowering"] == "tile-skip" and a["tile"] == (64, 64)
    assert (a["tiles_total"], a["tiles_visited"], a["tiles_skipped"]) == (256, 136, 120)
    assert a["tiles_mixed"] == 16 and a["tiles_visited"] - a["tiles_mixed"] == 120


@pytest.mark.parametrize("mask", sorted(_MASKS))
@pytest.mark.parametrize(
    ("rows", "cols", "tile"),
    [(1024, 1024, "64x64"), (1000, 1000, "64x64"), (300, 517, "128x64"), (65, 200, "32x128"),
     (257, 129, "16x16"), (1, 90, "64x64")],
)  # fmt: skip
def test_tiles_match_brute_force(mask: str, rows: int, cols: int, tile: str) -> None:
    tm, tn = (int(t) for t in tile.split("x"))
    a = _analyse(_attention(rows, cols, mask), tile)
    want = brute_force(_MASKS[mask][1], rows, cols, tm, tn)
    assert {k: a[k] for k in want} == want


def test_nominal_size_for_dynamic_dims() -> None:
    a = _analyse(_attention(None, 512, "causal"), nominal=512)
    assert a["tiles_total"] == 64
    assert {k: a[k] for k in ("tiles_visited", "tiles_mixed")} == {
        k: v
        for k, v in brute_force(_MASKS["causal"][1], 512, 512, 64, 64).items()
        if k in ("tiles_visited", "tiles_mixed")
    }


def _pointwise(cond: str) -> Func:
    b = Builder("pw")
    x = b.add_arg("x", TensorType(DType.F32, (100, 200)), "input")
    flag = b.add_arg("flag", TensorType(DType.BOOL, ()), "input")
    if cond == "data":
        c = b.emit(Op.GT, [x, b.constant(0.0, DType.F32)])
    elif cond == "uniform":
        c = flag
    elif cond == "constant":
        c = b.constant(True, DType.BOOL)
    else:  # non-affine function of coordinates: (col * col) < row
        col = b.emit(Op.INDEX, [x], {"axis": 1})
        c = b.emit(Op.LT, [b.emit(Op.MUL, [col, col]), b.emit(Op.INDEX, [x], {"axis": 0})])
    op = Op.SELECT if cond == "uniform" else Op.WHERE
    return b.finish([b.emit(op, [c, x, b.emit(Op.NEG, [x])])])


@pytest.mark.parametrize(
    ("cond", "cls", "lowering", "mixed"),
    [("data", "data-dependent", "predicate", 8), ("uniform", "uniform", "branch", 0),
     ("constant", "compile-time", "fold", 0), ("square", "data-dependent", "predicate", 8)],
)  # fmt: skip
def test_classes(cond: str, cls: str, lowering: str, mixed: int) -> None:
    a = _analyse(_pointwise(cond))
    assert (a["divergence"], a["lowering"], a["tiles_mixed"]) == (cls, lowering, mixed)
    assert a["tiles_total"] == 8 and a["tiles_skipped"] == 0  # 100x200 in 64x64: 2 x 4


def test_pointwise_index_mask_is_not_skipped() -> None:
    """All-false tiles of a where in a pointwise kernel still write the other branch."""
    b = Builder("tri")
    x = b.add_arg("x", TensorType(DType.F32, (128, 128)), "input")
    c = b.emit(Op.LE, [b.emit(Op.INDEX, [x], {"axis": 1}), b.emit(Op.INDEX, [x], {"axis": 0})])
    f = b.finish([b.emit(Op.WHERE, [c, x, b.constant(0.0, DType.F32)])])
    a = _analyse(f)
    assert a["divergence"] == "index-affine" and a["tiles_skipped"] == 0
    assert (a["tiles_total"], a["tiles_visited"], a["tiles_mixed"]) == (4, 4, 2)


def test_remark_reports_estimate() -> None:
    ctx = PassContext()
    run_pipeline(_attention(None, 1024, "causal"), parse_pipeline("fuse,divergence", PASSES), ctx)
    (line,) = ctx.remarks["divergence"]
    assert "256 total, 136 visited (16 mixed" in line and "120 skipped" in line
