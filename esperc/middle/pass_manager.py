"""The pass manager: passes as small frozen dataclasses, pipelines as strings.

A pipeline string is a comma-separated list of pass names, each with optional typed options in
braces, as mlir-opt spells them: ``"canonicalize,cse,dce,fuse{max-ops=32}"``. Options are the
pass's dataclass fields, written in kebab-case. The verifier runs after every pass by default;
a crash inside a pass becomes a ``PassCrash`` naming the pass (the CLI reports it as an internal
compiler error).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from esperc.diagnostics import DiagnosticError, error
from esperc.ir.graph import Func
from esperc.ir.verifier import VerifyError, verify


@dataclass
class PassContext:
    """Explicit state shared by the passes of one pipeline run (no globals).

    Attributes:
        target: GPU target the analyses plan for (``sm_90``, ``sm_80``...).
        stats: counters per pass (``{"cse": {"nodes-removed": 3}}``).
        timings: wall time per pass run, in ms.
        remarks: free-text remarks (``--explain-fusion`` output), per pass.
        after_pass: callback ``(pass_name, func)`` after each pass (printing, dumping).
    """

    target: str = "sm_90"
    verify_each: bool = True
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)
    remarks: dict[str, list[str]] = field(default_factory=dict)
    after_pass: Callable[[str, Func], None] | None = None
    current: str = ""

    def stat(self, key: str, n: int = 1) -> None:
        per = self.stats.setdefault(self.current, {})
        per[key] = per.get(key, 0) + n

    def remark(self, text: str) -> None:
        self.remarks.setdefault(self.current, []).append(text)


@dataclass(frozen=True)
class FunctionPass:
    """Base class: a pass maps a verified ``Func`` to a new verified ``Func``.

    Subclasses set ``name`` (kebab-case, the CLI token and lit file stem) and write a docstring
    whose first line is the summary ``esperc passes`` prints.
    """

    name: ClassVar[str] = ""

    def run(self, func: Func, ctx: PassContext) -> Func:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0]

    @classmethod
    def options(cls) -> list[tuple[str, str, Any]]:
        """``(kebab-name, type name, default)`` for each option."""
        return [(f.name.replace("_", "-"), str(f.type), f.default) for f in fields(cls)]


class PassCrash(Exception):
    """A pass raised an unexpected exception (an esperc bug, not a user error)."""

    def __init__(self, pass_name: str, cause: BaseException) -> None:
        super().__init__(f"pass '{pass_name}' crashed: {type(cause).__name__}: {cause}")
        self.pass_name = pass_name
        self.cause = cause


_ITEM = re.compile(r"\s*([a-z][a-z0-9-]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_pipeline(text: str, registry: dict[str, type[FunctionPass]]) -> list[FunctionPass]:
    """Instantiate the passes named by a pipeline string.

    Raises:
        DiagnosticError: E0603 for an unknown pass, an unknown option or a badly typed value.
    """
    out: list[FunctionPass] = []
    pos, text = 0, text.strip()
    where = None
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise error(
                "E0603", f"cannot parse pipeline at column {pos + 1}: {text[pos:]!r}", where
            )
        name, opts = m.group(1), m.group(2)
        if name not in registry:
            from esperc.diagnostics import did_you_mean

            note = did_you_mean(name, registry)
            raise error("E0603", f"unknown pass '{name}'", where, *([note] if note else []))
        out.append(_instantiate(registry[name], opts or ""))
        pos = m.end()
    return out


def _instantiate(cls: type[FunctionPass], opts: str) -> FunctionPass:
    kwargs: dict[str, Any] = {}
    known = {f.name: f for f in fields(cls)}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, _, raw = item.partition("=")
        attr = key.strip().replace("-", "_")
        if attr not in known:
            raise error("E0603", f"pass '{cls.name}' has no option '{key.strip()}'", None)
        default = known[attr].default
        try:
            kwargs[attr] = _convert(raw.strip(), default)
        except ValueError:
            raise error(
                "E0603",
                f"option '{key.strip()}' of '{cls.name}' wants {type(default).__name__}",
                None,
            ) from None
    return cls(**kwargs)


def _convert(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        if raw not in ("true", "false", "1", "0"):
            raise ValueError(raw)
        return raw in ("true", "1")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def run_pipeline(func: Func, passes: list[FunctionPass], ctx: PassContext) -> Func:
    """Run passes in order, verifying after each when ``ctx.verify_each``.

    Raises:
        DiagnosticError: a pass reported a user-facing problem (e.g. E0301 from smem-plan).
        PassCrash: a pass raised anything else, or its output did not verify.
    """
    for p in passes:
        ctx.current = p.name
        start = time.perf_counter()
        try:
            func = p.run(func, ctx)
            if ctx.verify_each:
                verify(func)
        except DiagnosticError:
            raise
        except VerifyError as e:
            raise PassCrash(p.name, e) from e
        except Exception as e:  # noqa: BLE001 - any crash inside a pass is an ICE naming it
            raise PassCrash(p.name, e) from e
        ctx.timings.append((p.name, (time.perf_counter() - start) * 1e3))
        if ctx.after_pass is not None:
            ctx.after_pass(p.name, func)
    return func
