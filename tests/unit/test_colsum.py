"""Column reductions (reductions over the leading axes) through the default pipeline, code
generation and Triton's interpreter, against plain PyTorch.

Each blueprint puts its column reductions in a different kernel kind: a pointwise kernel, a
single-pass row reduction (the LayerNorm weight-gradient shape), a matmul epilogue (a bias
gradient), and alone on an input; and a reduction over a middle axis (the ``reduce-last`` pass).
Row counts run past one partials row (16) and past the 256-partials cap of looping kernels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from esperc.backend.triton.emitter import generate
from esperc.backend.triton.launcher import import_triton_normally, run_generated
from esperc.driver import Options, compile_ir
from esperc.ir.numerics import rel_err

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SOURCES = {
    "pointwise": """
blueprint colsum_pw {
  dim B in [1, 8192]
  input x: f32[B, 24]
  input y: f32[B, 24]
  s = sum(exp(x) * y, axis=0)
  m = max(x - y, axis=0, keepdim=true)
  a = mean(x, axis=0)
  return (s, m, a)
}""",
    "row_reduction": """
blueprint colsum_rows {
  dim N in [1, 8192]
  input x: bf16[N, 40]
  input g: bf16[N, 40]
  param w: bf16[40]
  xf = cast(x, f32)
  gf = cast(g, f32)
  mu = mean(xf, axis=-1, keepdim=true)
  xhat = xf - mu
  dw = sum(gf * xhat, axis=0)
  db = sum(gf, axis=0)
  dx = cast(gf * cast(w, f32) - mean(gf * xhat, axis=-1, keepdim=true), bf16)
  return (dx, dw, db)
}""",
    "matmul": """
blueprint colsum_mm {
  dim B in [1, 8192]
  input dy: bf16[B, 32]
  param w: bf16[32, 48]
  h = matmul(dy, w)
  hf = cast(h, f32)
  return (h, sum(hf * hf, axis=0))
}""",
    "input": """
blueprint colsum_in {
  dim B in [1, 8192]
  dim S = 3
  input dy: f32[B, S, 16]
  return (sum(dy, axis=[0, 1]), sum(dy, axis=1))
}""",
}


def _ref(name: str, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if name == "pointwise":
        x, y = t["x"], t["y"]
        return (torch.exp(x) * y).sum(0), (x - y).amax(0, keepdim=True), x.mean(0)
    if name == "row_reduction":
        xf, gf, w = t["x"].float(), t["g"].float(), t["w"].float()
        xhat = xf - xf.mean(-1, keepdim=True)
        dx = (gf * w - (gf * xhat).mean(-1, keepdim=True)).bfloat16()
        return dx, (gf * xhat).sum(0), gf.sum(0)
    if name == "matmul":
        h = t["dy"] @ t["w"]
        return h, (h.float() * h.float()).sum(0)
    return t["dy"].sum((0, 1)), t["dy"].sum(1)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    out = {}
    folder = tmp_path_factory.mktemp("colsum")
    for name, text in SOURCES.items():
        path = Path(folder) / f"{name}.esp"
        path.write_text(text)
        func, _ = compile_ir(path, Options())
        out[name] = (func, generate(func))
    return out


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    import_triton_normally()  # before the variable: else later compiles in this worker fail
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_column_reductions_join_their_producers(compiled) -> None:  # noqa: ANN001
    kinds = {}
    for name, (func, gen) in compiled.items():
        kinds[name] = {r.attr("kind") for r in func.regions if r.attr("colsum")}
        finishers = [k for k in gen.kernels if k.finishes]
        assert finishers and all(f.finishes in {k.name for k in gen.kernels} for f in finishers)
    assert kinds == {"pointwise": {"pointwise"}, "row_reduction": {"reduction"},
                     "matmul": {"matmul"}, "input": {"pointwise"}}  # fmt: skip
    func, _ = compiled["input"]
    assert any(n.op.value in ("permute", "transpose") for n in func.body)  # axis 1: moved last


@pytest.mark.parametrize("rows", [1, 17, 300, 4500])
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_matches_pytorch(compiled, name: str, rows: int) -> None:  # noqa: ANN001
    func, gen = compiled[name]
    g = torch.Generator().manual_seed(rows)
    tensors = {}
    for a in func.args:
        shape = [rows if not isinstance(d, int) else d for d in a.type.shape]
        dt = {"f32": torch.float32, "bf16": torch.bfloat16}[a.type.dtype.value]
        tensors[a.name] = torch.randn(shape, generator=g).to(dt)
    got = run_generated(gen, func, tensors)
    want = _ref(name, tensors)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        tol = 1e-2 if b.dtype == torch.bfloat16 or name == "matmul" else 1e-5
        assert rel_err(a, b) <= tol, (name, rows, rel_err(a, b))
