"""Runtime input never crashes a loaded package or gives a wrong result (issue "Robustness",
part 4).

``esperc.load`` of the tiny package (``pkg_fixtures.TINY_ESP``: ``x: bf16[N, D]``,
``y: f32[N, D]``, ``w: bf16[D]``, ``N in [1, 64]``, ``D in [2, 32]``, ``require D % 2 == 0``)
called on CPU tensors, so kernels run in Triton's interpreter. Every bad call is a
``GuardError`` naming the argument or dim, checked at every call (valid, invalid, valid again);
every accepted call matches a plain PyTorch reference written here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from pkg_fixtures import repack, tiny_package

import esperc
from esperc.ir.interpreter import GuardError
from esperc.runtime import artifact as artifact_mod
from esperc.runtime.artifact import Artifact, EsperWarning, FallbackError

BF16, F32 = torch.bfloat16, torch.float32


def reference(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """softmax(f32(x * w) + y) over the last axis, with the product rounded to bf16."""
    logits = (x.detach() * w.detach()).to(F32) + y.detach()
    return torch.softmax(logits.cpu(), dim=-1)


def inputs(n: int = 3, d: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, d, generator=g).to(BF16),
        "y": torch.randn(n, d, generator=g),
        "w": torch.randn(d, generator=g).to(BF16),
    }


@pytest.fixture(scope="module")
def art() -> Artifact:
    return esperc.load(tiny_package())


def check(art: Artifact, **args: torch.Tensor) -> torch.Tensor:
    """Call ``art`` and compare with the reference (NaN where the reference has NaN)."""
    out = art(**args)
    want = reference(**args)
    assert out.dtype == F32 and out.shape == want.shape and out.device.type == "cpu"
    torch.testing.assert_close(out, want, atol=5e-3, rtol=1e-2, equal_nan=True)
    return out


def rejects(art: Artifact, call: Callable[[], Any], *names: str) -> str:
    """A valid call, then ``call`` fails with a GuardError naming every one of ``names``, then a
    valid call again: guards hold at every call and a failure leaves no state behind."""
    check(art, **inputs(seed=1))
    with pytest.raises(GuardError) as info:
        call()
    msg = str(info.value)
    assert all(n in msg for n in names), msg
    assert "\n" not in msg
    check(art, **inputs(seed=2))
    return msg


# ------------------------------------------------------------------ dtype, rank, dims, require


DECLARED = {"x": BF16, "y": F32, "w": BF16}
WRONG_DTYPES = [
    (name, dt)
    for name in DECLARED
    for dt in (torch.float16, torch.float64, torch.int32, torch.bool, BF16, F32, torch.complex64)
    if dt != DECLARED[name]
]


@pytest.mark.parametrize(("name", "dtype"), WRONG_DTYPES, ids=map(str, WRONG_DTYPES))
def test_wrong_dtype(art: Artifact, name: str, dtype: torch.dtype) -> None:
    args = inputs()
    args[name] = args[name].to(dtype)
    msg = rejects(art, lambda: art(**args), name)
    assert "expected" in msg


@pytest.mark.parametrize(
    ("name", "shape"),
    [("x", (8,)), ("x", (1, 3, 8)), ("x", ()), ("y", (24,)), ("w", (1, 8)), ("w", ())],
)
def test_wrong_rank(art: Artifact, name: str, shape: tuple[int, ...]) -> None:
    args = inputs()
    args[name] = torch.zeros(shape, dtype=args[name].dtype)
    msg = rejects(art, lambda: art(**args), name)
    assert "rank" in msg


@pytest.mark.parametrize(
    ("n", "d", "guard"),
    [(65, 8, "N"), (1000, 8, "N"), (0, 8, "N"), (3, 34, "D"), (3, 64, "D"), (3, 0, "D")],
)
def test_dim_outside_its_range(art: Artifact, n: int, d: int, guard: str) -> None:
    """Ranges are inclusive and start at 1 or more, so a zero-size dim is a guard error too."""
    args = inputs(n, d)
    msg = rejects(art, lambda: art(**args), f"dim {guard} = {n if guard == 'N' else d}")
    assert "outside" in msg


def test_dims_at_the_edges_of_their_ranges(art: Artifact) -> None:
    for n, d in ((1, 2), (64, 32), (1, 32), (64, 2)):
        check(art, **inputs(n, d))


@pytest.mark.parametrize("d", [3, 5, 31])
def test_violated_require(art: Artifact, d: int) -> None:
    msg = rejects(art, lambda: art(**inputs(3, d)), "require D % 2 == 0", f"D={d}")
    assert "failed" in msg


@pytest.mark.parametrize(
    ("shapes", "name"),
    [({"y": (2, 8)}, "y"), ({"y": (3, 6)}, "y"), ({"w": (6,)}, "w"), ({"w": (10,)}, "w")],
)
def test_arguments_that_disagree_on_a_dim(
    art: Artifact, shapes: dict[str, tuple[int, ...]], name: str
) -> None:
    args = inputs()
    for k, s in shapes.items():
        args[k] = torch.zeros(s, dtype=args[k].dtype)
    rejects(art, lambda: art(**args), name)


# ------------------------------------------------------------------ binding the arguments


def test_missing_unknown_and_duplicated_arguments(art: Artifact) -> None:
    a = inputs()
    x, y, w = a["x"], a["y"], a["w"]
    rejects(art, lambda: art(x, y), "w")
    rejects(art, lambda: art(x=x, w=w), "y")
    rejects(art, lambda: art(), "x")
    rejects(art, lambda: art(x, y, w, z=w), "z")
    rejects(art, lambda: art(x, y, w, W=w), "W")
    rejects(art, lambda: art(x, y, w, x=x), "x")
    rejects(art, lambda: art(x, y, w=w, y=y), "y")
    rejects(art, lambda: art(x, y, w, w), "3", "4")
    check(art, x=x, y=y, w=w)
    torch.testing.assert_close(art(x, y, w), art(w=w, y=y, x=x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "bad",
    [1.0, 3, None, [1.0] * 8, "y", (lambda: 0)] + [__import__("numpy").ones((3, 8), "float32")],
    ids=["float", "int", "None", "list", "str", "function", "ndarray"],
)
def test_arguments_that_are_not_tensors(art: Artifact, bad: Any) -> None:
    args: dict[str, Any] = {**inputs(), "y": bad}
    msg = rejects(art, lambda: art(**args), "y")
    assert "torch.Tensor" in msg


def test_sparse_tensor(art: Artifact) -> None:
    args = inputs()
    args["y"] = args["y"].to_sparse()
    assert "layout" in rejects(art, lambda: art(**args), "y")


# ------------------------------------------------------------------ devices


def test_meta_device(art: Artifact) -> None:
    """Meta tensors hold no data: a GuardError naming the argument (not an eager run that
    returns meta tensors), also when only one argument is on meta."""
    for name in ("x", "y", "w"):
        args = inputs()
        args[name] = args[name].to("meta")
        rejects(art, lambda a=args: art(**a), name, "meta")
    rejects(art, lambda: art(**{k: v.to("meta") for k, v in inputs().items()}), "x", "meta")
    strict = esperc.load(tiny_package(), fallback="error")
    with pytest.raises(GuardError, match="meta"):
        strict(**{k: v.to("meta") for k, v in inputs().items()})


def test_mixed_devices_are_named() -> None:
    """All tensors of a call on one device (a CPU-only machine has only cpu and meta)."""
    from esperc.runtime.checks import check_tensors

    check_tensors("tiny", inputs())
    args = inputs()
    args["w"] = args["w"].to("meta")
    with pytest.raises(GuardError, match="w"):
        check_tensors("tiny", args)


# ------------------------------------------------------------------ layouts and alignment


def test_non_contiguous_views(art: Artifact) -> None:
    a = inputs(4, 8)
    views = {
        "x transposed": {"x": a["x"].t().contiguous().t()},
        "y transposed": {"y": a["y"].t().contiguous().t()},
        "w strided": {"w": torch.stack([a["w"], a["w"]], 1)[:, 0]},
        "y expanded": {"y": a["y"][:1].expand(4, 8)},
        "x column slice": {"x": torch.cat([a["x"], a["x"]], 1)[:, 3:11]},
        "all flipped": {k: v.flip(0) for k, v in a.items()},
    }
    for what, repl in views.items():
        args = {**a, **repl}
        assert any(not t.is_contiguous() for t in repl.values()) or what == "all flipped", what
        check(art, **args)
        torch.testing.assert_close(
            art(**args), art(**{k: v.contiguous() for k, v in args.items()}), rtol=0, atol=0
        )


def test_misaligned_views_are_copied_and_correct(art: Artifact) -> None:
    a = inputs(3, 8)
    for name in ("x", "y", "w"):
        t = a[name]
        storage = torch.empty(t.numel() + 1, dtype=t.dtype)
        view = storage[1:].view(t.shape)
        view.copy_(t)
        assert view.storage_offset() == 1 and view.data_ptr() % 16
        out = check(art, **{**a, name: view})
        torch.testing.assert_close(out, art(**a), rtol=0, atol=0)
        assert torch.equal(view, t)  # the caller's tensor is not touched


# ------------------------------------------------------------------ values and autograd


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_and_inf_propagate_like_pytorch(art: Artifact) -> None:
    a = inputs(4, 8)
    a["x"][0, 1] = float("nan")
    a["y"][1, 2] = float("inf")
    a["y"][2, 0] = float("-inf")
    a["w"][5] = float("inf")  # x * inf in row 3 (and everywhere in column 5)
    out = art(**a)
    want = reference(**a)
    assert torch.equal(torch.isnan(out), torch.isnan(want)), (out, want)
    finite = torch.isfinite(want)
    torch.testing.assert_close(out[finite], want[finite], atol=5e-3, rtol=1e-2)
    b = inputs(4, 8)
    b["y"][3] = float("-inf")  # a whole row of -inf: 0/0
    assert torch.equal(torch.isnan(art(**b)), torch.isnan(reference(**b)))


def test_requires_grad_inputs(art: Artifact) -> None:
    a = {k: v.clone().requires_grad_() for k, v in inputs().items()}
    out = check(art, **a)
    assert out.shape == (3, 8)
    assert all(t.grad is None for t in a.values())
    module = art.as_module({"w": a["w"]})
    torch.testing.assert_close(module(a["x"], a["y"]), out, rtol=0, atol=0)
    with pytest.raises(GuardError, match="x"):
        module(a["x"].float(), a["y"])


# ------------------------------------------------------------------ fallback


def _no_triton(monkeypatch: pytest.MonkeyPatch, why: str = "No module named 'triton'") -> None:
    def fail(_source: str) -> Any:
        raise ImportError(why)

    monkeypatch.setattr(artifact_mod, "load_interpreted", fail)


def test_fallback_error_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    strict = esperc.load(tiny_package(), fallback="error")
    _no_triton(monkeypatch)
    for _ in range(2):
        with pytest.raises(FallbackError, match="Triton is not importable"):
            strict(**inputs())
    with pytest.raises(GuardError):  # guards come first, even with no launcher
        strict(**inputs(3, 5))
    with pytest.raises(ValueError, match="fallback"):
        esperc.load(tiny_package(), fallback="silent")


def test_fallback_eager_warns_once_per_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    lenient = esperc.load(tiny_package())
    _no_triton(monkeypatch, "reason one")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for seed in range(3):
            check(lenient, **inputs(seed=seed))
        _no_triton(monkeypatch, "reason two")
        for seed in range(3):
            check(lenient, **inputs(seed=seed))
    ours = [str(w.message) for w in seen if issubclass(w.category, EsperWarning)]
    assert len(ours) == 2, ours
    assert "reason one" in ours[0] and "reason two" in ours[1] and "eager" in ours[0]


def test_failed_validation_warns_once_and_runs_eager() -> None:
    def fail_validation(m: dict[str, Any]) -> None:
        for k in m["kernels"].values():
            k["validation"] = {"status": "fail"}

    art = esperc.load(repack(tiny_package(), fail_validation), fallback="error")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for seed in range(3):
            check(art, **inputs(seed=seed))
    ours = [str(w.message) for w in seen if issubclass(w.category, EsperWarning)]
    assert len(ours) == 1 and "failed validation" in ours[0], ours
