"""The explicit pass registry and the default pipeline.

Every pass module is imported here and listed once; ``esperc passes`` prints this table and a
unit test checks that each registered pass has a lit file ``tests/lit/middle/<name>.eir``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a hint only: DEFAULT_PIPELINE is read without the IR (the CLI's fast path)
    from esperc.middle.pass_manager import FunctionPass

PASSES: dict[str, type[FunctionPass]] = {}


def register(cls: type[FunctionPass]) -> type[FunctionPass]:
    """Add a pass class to ``PASSES`` under its kebab-case name (used by the pass modules)."""
    assert cls.name and cls.name not in PASSES, cls.name
    PASSES[cls.name] = cls
    return cls


# The default pipeline of `esperc compile`: clean up, decompose composites where fusion gains,
# move reduced middle axes last, clean up again, then form kernel regions and analyse them.
DEFAULT_PIPELINE = (
    "canonicalize,cse,dce,decompose,reduce-last,canonicalize,cse,dce,fuse,divergence,smem-plan"
)


def load_passes() -> dict[str, type[FunctionPass]]:
    """Import every pass module (each registers itself) and return the registry."""
    import esperc.middle.passes  # noqa: F401  (side effect: registration)

    return PASSES
