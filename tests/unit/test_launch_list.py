"""Launch lists (``esperc.runtime.launch_list``): a call's plan resolved once per signature.

Run in Triton's interpreter on the CPU (the cubin launcher binds the same way on a GPU, see
tests/gpu). Numerics are checked against a plain PyTorch softmax of ``x * w + y``; replayed
calls must also equal the checked path bit for bit on the same inputs.
"""

from __future__ import annotations

import pytest
import torch
from pkg_fixtures import tiny_package

import esperc
from esperc.ir.interpreter import GuardError
from esperc.ir.numerics import rel_err
from esperc.runtime import launch_list

# x * w is a bf16 product: the kernel may keep it in f32 where eager rounds it to bf16 first
TOL = 4e-3


def _ref(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.softmax((x * w).float() + y, dim=-1)


def _inputs(n: int, d: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, d, generator=g).to(torch.bfloat16),
        "y": torch.randn(n, d, generator=g),
        "w": torch.randn(d, generator=g).to(torch.bfloat16),
    }


@pytest.fixture
def art():  # noqa: ANN201 - an Artifact
    return esperc.load(tiny_package(), fallback="error")


def _no_guards(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("guards ran on a replayed call")

    monkeypatch.setattr("esperc.runtime.artifact.check_guards", fail)


def test_second_call_replays_and_matches_reference(art, monkeypatch) -> None:
    art(**_inputs(5, 8, 0))
    assert art.launch_lists == 1
    _no_guards(monkeypatch)
    for seed in (1, 2):
        ins = _inputs(5, 8, seed)
        got = art(**ins)
        assert rel_err(got, _ref(**ins)) < TOL
    assert art.launch_lists == 1


def test_replay_equals_the_checked_path_bit_for_bit(art) -> None:
    ins = _inputs(3, 16, 4)
    first = art(**ins)  # records
    again = art(**ins)  # replays
    assert torch.equal(first, again)
    fresh = esperc.load(tiny_package(), fallback="error")
    slow = fresh(**{k: v.t().contiguous().t() if v.dim() == 2 else v for k, v in ins.items()})
    assert torch.equal(first, slow)


def test_each_shape_gets_its_own_list(art) -> None:
    for n, d in ((1, 2), (7, 10), (1, 2), (64, 32)):
        ins = _inputs(n, d, n + d)
        assert rel_err(art(**ins), _ref(**ins)) < TOL
    assert art.launch_lists == 3


def test_guards_still_fail_after_a_list_exists(art) -> None:
    art(**_inputs(4, 8, 0))
    bad = _inputs(4, 8, 0)
    bad["x"] = bad["x"].float()  # wrong dtype: a new signature, so the guards run
    with pytest.raises(GuardError, match="x: expected bf16"):
        art(**bad)
    with pytest.raises(GuardError, match="require"):
        art(**_inputs(4, 7, 0))  # D % 2 != 0
    with pytest.raises(GuardError, match="outside"):
        art(**_inputs(65, 8, 0))
    assert art.launch_lists == 1


def test_non_contiguous_or_misaligned_inputs_take_the_checked_path(art) -> None:
    art(**_inputs(4, 8, 0))
    ins = _inputs(4, 8, 1)
    strided = dict(ins, y=torch.randn(8, 4).t())  # same shape and dtype, not contiguous
    assert launch_list.signature(strided) is None
    assert rel_err(art(**strided), _ref(**strided)) < TOL
    buf = torch.randn(4 * 8 + 1)
    shifted = dict(ins, y=buf[1:].view(4, 8))  # contiguous, 4 bytes past an aligned address
    assert shifted["y"].data_ptr() % 16
    assert launch_list.signature(shifted) is None
    assert rel_err(art(**shifted), _ref(**shifted)) < TOL
    assert art.launch_lists == 1


def test_non_tensor_is_still_a_guard_error(art) -> None:
    art(**_inputs(2, 4, 0))
    ins = _inputs(2, 4, 0)
    ins["w"] = [1.0, 2.0, 3.0, 4.0]
    assert launch_list.signature(ins) is None
    with pytest.raises(GuardError, match="w: expected a torch.Tensor"):
        art(**ins)


def test_oldest_list_is_evicted(art, monkeypatch) -> None:
    monkeypatch.setattr("esperc.runtime.artifact.MAX_SIGNATURES", 2)
    for n in (1, 2, 3):
        art(**_inputs(n, 4, n))
    assert art.launch_lists == 2
    ins = _inputs(1, 4, 9)  # evicted: recorded again, still right
    assert rel_err(art(**ins), _ref(**ins)) < TOL
    assert art.launch_lists == 2


def test_outputs_are_fresh_tensors_each_call(art) -> None:
    ins = _inputs(3, 4, 0)
    a = art(**ins)
    b = art(**ins)
    assert a.data_ptr() != b.data_ptr()
    assert torch.equal(a, b)
