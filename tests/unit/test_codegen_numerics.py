"""Generated Triton kernels run in the Triton interpreter vs independent plain-PyTorch code.

Every kernel kind, several values of each dynamic dim (odd ones included), both sides of the
uniform branch, causal tile skipping. Tolerances: bf16/f16 outputs 2e-2 (one rounding of the
output), f32 1e-4.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_codegen_ir import CASES, case

from esperc.backend.triton.emitter import generate
from esperc.backend.triton.launcher import import_triton_normally, load_module, run_generated
from esperc.ir.ops import Op
from esperc.ir.parser import parse_func

# masked-off lanes compute on the zeros they loaded (log(0), -inf - -inf): numpy warns, GPUs do not
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run kernels in the Triton interpreter (CPU); scoped to each test so that modules compiling
    real cubins in the same worker are not affected. @triton.jit reads it at definition time."""
    import_triton_normally()  # before the variable: else later compiles in this worker fail
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def run(name_or_func, inputs):  # noqa: ANN001, ANN201
    func = case(name_or_func) if isinstance(name_or_func, str) else name_or_func
    gen = generate(func)
    return run_generated(gen, func, inputs, load_module(gen.source))


def close(got: torch.Tensor, want: torch.Tensor, tol: float | None = None) -> None:
    low = got.dtype in (torch.bfloat16, torch.float16)
    tol = tol if tol is not None else (2e-2 if low else 1e-4)
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol, equal_nan=True)


def rnd(*shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape) * scale).to(dtype)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("b", [1, 7, 33])
@pytest.mark.parametrize("flag", [True, False])
def test_pointwise_uniform_branch(b: int, flag: bool) -> None:
    x, bias, r = (
        rnd(b, 40, dtype=torch.bfloat16),
        rnd(40, dtype=torch.bfloat16),
        rnd(b, 1, dtype=torch.bfloat16),
    )
    (y,) = run("branch", {"x": x, "flag": torch.tensor(flag), "b": bias, "r": r})
    xf = x.float()
    want = F.gelu((xf + bias.float()) * 2) - r.float() if flag else torch.tanh(xf)
    close(y, want.to(torch.bfloat16), 3e-2)


@pytest.mark.parametrize("n", [1, 5, 64, 67])
def test_pointwise_flat(n: int) -> None:
    x, y, a = rnd(n, 4), rnd(n, 4), torch.tensor(0.7)
    (out,) = run("flat", {"x": x, "y": y, "a": a})
    close(out, torch.sigmoid(a * x + y))


@pytest.mark.parametrize(("b", "s"), [(1, 1), (3, 5), (2, 17)])
def test_pointwise_broadcast_rank3(b: int, s: int) -> None:
    x, y, z = (
        rnd(b, s, 8, dtype=torch.float16),
        rnd(b, 1, 8, dtype=torch.float16),
        rnd(s, 1, dtype=torch.float16),
    )
    out, sq = run("broadcast3d", {"x": x, "y": y, "z": z})
    v = (x.float() + y.float()) * z.float()
    want = v + torch.arange(s).view(1, s, 1).float()
    close(out, want)
    close(sq, y.float() * y.float())


@pytest.mark.parametrize("name", ["ln_single", "ln_looped"])
@pytest.mark.parametrize("b", [1, 5, 17])
def test_layer_norm_softmax_max(name: str, b: int) -> None:
    x, g, bias = (
        rnd(b, 100, dtype=torch.bfloat16),
        rnd(100, dtype=torch.bfloat16),
        rnd(100, dtype=torch.bfloat16),
    )
    y, s, m = run(name, {"x": x, "g": g, "b": bias})
    xf = x.float()
    close(y, F.layer_norm(xf, (100,), g.float(), bias.float(), 1e-5), 3e-2)
    close(s, torch.softmax(xf, -1))
    close(m, xf.amax(-1))
    assert m.shape == (b,)


@pytest.mark.parametrize(("b", "h"), [(1, 1), (2, 3), (3, 8)])
def test_trailing_axes_stats_rms_log_softmax(b: int, h: int) -> None:
    x, w = rnd(b, 3, h, 5), rnd(5)
    m, v, lsm, mn = run("stats", {"x": x, "w": w})
    close(m, x.mean(dim=(2, 3), keepdim=True))
    if h * 5 > 1:
        close(v, x.var(dim=(2, 3), correction=1))
    r = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    want = torch.log_softmax(r, -1)
    close(lsm, want)
    close(mn, want.amin(-1, keepdim=True))


@pytest.mark.parametrize("n", [1, 6, 19])
def test_cross_entropy_rows(n: int) -> None:
    logits = rnd(n, 50, dtype=torch.bfloat16, scale=3.0)
    target = torch.randint(0, 50, (n, 1))
    (nll,) = run("xent", {"logits": logits, "target": target})
    want = F.cross_entropy(logits.float(), target[:, 0], reduction="none")
    close(nll, want)


@pytest.mark.parametrize("b", [1, 7, 33])
def test_linear_bias_gelu_residual(b: int) -> None:
    x, w = rnd(b, 48, dtype=torch.bfloat16), rnd(40, 48, dtype=torch.bfloat16, scale=0.2)
    bias, r = rnd(40, dtype=torch.bfloat16), rnd(b, 40, dtype=torch.bfloat16)
    (y,) = run("linear", {"x": x, "w": w, "b": bias, "r": r})
    want = F.gelu(F.linear(x.float(), w.float(), bias.float()), approximate="tanh") + r.float()
    close(y, want, 3e-2)


@pytest.mark.parametrize("b", [1, 3])
def test_batched_matmul_f32_two_outputs(b: int) -> None:
    a, bb, bias = rnd(b, 20, 24), rnd(b, 24, 36), rnd(36)
    c, e = run("bmm", {"a": a, "b": bb, "bias": bias})
    want = torch.bmm(a, bb)
    close(c, want)
    close(e, torch.relu(want + bias))


@pytest.mark.parametrize(("b", "s"), [(1, 1), (2, 9), (3, 21)])
def test_matmul_by_transposed_weight(b: int, s: int) -> None:
    x, wa = rnd(b, s, 32, dtype=torch.bfloat16), rnd(16, 32, dtype=torch.bfloat16, scale=0.3)
    (y,) = run("lora", {"x": x, "wa": wa})
    close(y, 2.0 * (x.float() @ wa.float().T), 3e-2)


def _sdpa(q, k, v, scale, causal=False, mask=None):  # noqa: ANN001, ANN202 - plain torch
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if causal:
        i = torch.arange(s.shape[-2])[:, None]
        j = torch.arange(s.shape[-1])[None, :]
        s = s.masked_fill(j > i, float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v.float()


@pytest.mark.parametrize(("b", "s"), [(1, 1), (2, 17), (1, 40)])
def test_causal_attention(b: int, s: int) -> None:
    q, k, v = (rnd(b, 2, s, 32, dtype=torch.bfloat16) for _ in range(3))
    (o,) = run("attn_causal", {"q": q, "k": k, "v": v})
    close(o, _sdpa(q, k, v, 0.125, causal=True))


def test_causal_attention_skips_tiles_above_the_diagonal() -> None:
    """Keys from 32 on are NaN: queries < 32 (two 16-row blocks) never read them, so they stay
    exact; a kernel that visited (and masked) those tiles would produce 0 * NaN = NaN."""
    s = 48
    q, k, v = (rnd(1, 2, s, 32, dtype=torch.bfloat16) for _ in range(3))
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[:, :, 32:] = float("nan")
    v_bad[:, :, 32:] = float("nan")
    (o,) = run("attn_causal", {"q": q, "k": k_bad, "v": v_bad})
    close(o[:, :, :32], _sdpa(q, k, v, 0.125, causal=True)[:, :, :32])
    assert torch.isnan(o[:, :, 32:].float()).all()


@pytest.mark.parametrize(("b", "s"), [(1, 3), (2, 20)])
def test_masked_attention_through_views(b: int, s: int) -> None:
    x = rnd(b, s, 2, 16, dtype=torch.float16)
    k, v = rnd(b, s, 16, dtype=torch.float16), rnd(b, s, 16, dtype=torch.float16)
    mask = torch.rand(s, s) > 0.3
    mask[:, 0] = True
    (o,) = run("attn_masked", {"x": x, "k": k, "v": v, "mask": mask})
    q = x.permute(0, 2, 1, 3)[:, 0]
    close(o, _sdpa(q, k, v, 0.25, mask=mask))


@pytest.mark.parametrize("b", [1, 6])
def test_unpartitioned_function_gets_a_region_per_node(b: int) -> None:
    x, w = rnd(b, 2, 8), rnd(12, 16)
    (y,) = run("unpartitioned", {"x": x, "w": w})
    close(y, torch.softmax(x.reshape(b, 16) @ w.T, -1) ** 3)


# --- every elementwise op, against its PyTorch counterpart -----------------------------------

UNARY = {
    Op.NEG: torch.neg, Op.ABS: torch.abs, Op.EXP: torch.exp, Op.LOG: lambda x: torch.log(x.abs() + 0.1),
    Op.SQRT: lambda x: torch.sqrt(x.abs()), Op.RSQRT: lambda x: torch.rsqrt(x.abs() + 0.1),
    Op.SIN: torch.sin, Op.COS: torch.cos, Op.TANH: torch.tanh, Op.SIGMOID: torch.sigmoid,
    Op.ERF: torch.erf, Op.RELU: torch.relu, Op.SILU: F.silu, Op.SOFTPLUS: F.softplus,
    Op.FLOOR: torch.floor,
}  # fmt: skip
_PRE = {Op.LOG: "abs", Op.SQRT: "abs", Op.RSQRT: "abs"}


@pytest.mark.parametrize("op", sorted(UNARY, key=str))
def test_unary_op(op: Op) -> None:
    pre = _PRE.get(op)
    body = ["%a = abs %x : f32[B,16]", "%c = constant {dtype = f32, value = 0.1} : f32[]",
            "%p = add %a, %c : f32[B,16]"] if pre and op is not Op.SQRT else (
            ["%p = abs %x : f32[B,16]"] if pre else [])  # fmt: skip
    src = "%p" if pre else "%x"
    text = "\n".join(["func @u {", "  dim B in [1, 64]", "  input %x : f32[B,16]", *body,
                      f"  %y = {op.value} {src} : f32[B,16]", "  return %y", "}"])  # fmt: skip
    x = rnd(5, 16, scale=3.0)
    (y,) = run(parse_func(text), {"x": x})
    close(y, UNARY[op](x), 2e-5)


BINARY = {
    Op.ADD: torch.add, Op.SUB: torch.sub, Op.MUL: torch.mul, Op.DIV: torch.div,
    Op.FLOORDIV: torch.floor_divide, Op.MOD: torch.remainder, Op.MAXIMUM: torch.maximum,
    Op.MINIMUM: torch.minimum, Op.LT: torch.lt, Op.LE: torch.le, Op.GT: torch.gt, Op.GE: torch.ge,
    Op.EQ: torch.eq, Op.NE: torch.ne,
}  # fmt: skip


# div needs floating-point operands (the IR rejects i32 div), so that pair is not generated.
@pytest.mark.parametrize(
    ("op", "dtype"),
    [(op, dt) for op in sorted(BINARY, key=str) for dt in ("f32", "i32")
     if not (op is Op.DIV and dt == "i32")],
)  # fmt: skip
def test_binary_op(op: Op, dtype: str) -> None:
    out = "bool" if op in (Op.LT, Op.LE, Op.GT, Op.GE, Op.EQ, Op.NE) else dtype
    text = f"""func @b {{
  dim B in [1, 64]
  input %x : {dtype}[B,8]
  input %y : {dtype}[8]
  %z = {op.value} %x, %y : {out}[B,8]
  return %z
}}"""
    if dtype == "i32":
        x, y = (
            torch.randint(-20, 20, (3, 8), dtype=torch.int32),
            torch.tensor([-7, -3, -2, -1, 1, 2, 3, 7], dtype=torch.int32),
        )
    else:
        x, y = rnd(3, 8, scale=4.0), rnd(8, scale=2.0)
        y[0] = 2.0  # x == y ties for eq/le
        x[0, 0] = 2.0
    (z,) = run(parse_func(text), {"x": x, "y": y})
    want = BINARY[op](x, y)
    assert z.dtype == want.dtype
    close(
        z.float() if out != "bool" else z.int(), want.float() if out != "bool" else want.int(), 1e-5
    )


def test_pow_where_clamp_logic() -> None:
    text = """func @t {
  dim B in [1, 64]
  input %x : f32[B,8]
  input %e : f32[8]
  %c = constant {dtype = f32, value = 0.0} : f32[]
  %h = constant {dtype = f32, value = 1.5} : f32[]
  %p = pow %x, %e : f32[B,8]
  %g = gt %x, %c : bool[B,8]
  %l = lt %x, %h : bool[B,8]
  %a = logical_and %g, %l : bool[B,8]
  %o = logical_or %a, %g : bool[B,8]
  %n = logical_not %o : bool[B,8]
  %w = where %n, %p, %x : f32[B,8]
  %k = clamp %w, %c, %h : f32[B,8]
  return %p, %k, %a
}"""
    x, e = rnd(4, 8, scale=2.0), torch.tensor([2.0, 3.0, 0.5, -1.0, 0.0, 1.0, 2.5, -2.0])
    p, k, a = run(parse_func(text), {"x": x, "e": e})
    want_p = torch.pow(x, e)
    torch.testing.assert_close(p, want_p, atol=1e-5, rtol=1e-4, equal_nan=True)
    n = ~((x > 0) & (x < 1.5) | (x > 0))
    close(k, torch.clamp(torch.where(n, want_p, x), 0.0, 1.5))
    assert torch.equal(a, (x > 0) & (x < 1.5))


def test_cases_cover_every_kind() -> None:
    kinds = {k.kind for name in CASES for k in generate(case(name)).kernels}
    assert kinds == {"pointwise", "reduction", "matmul", "attention"}
