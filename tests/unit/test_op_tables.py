"""Every per-op table covers every ``Op`` exactly once (ops.py: one table per concern)."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from esperc.ir.ops import OPS, Op
from esperc.ir.reference import REFERENCE

# Tables of modules that exist join the list; a module that does not exist yet is simply not
# in it (no skip that would read as a pass). A module that exists but fails to import fails.
OPTIONAL = [
    ("esperc.backend.triton.lowering", "LOWERING"),
    ("esperc.middle.autodiff", "GRADIENTS"),
]


def _discover() -> list[tuple[str, dict[Op, Any]]]:
    tables: list[tuple[str, dict[Op, Any]]] = [("OPS", OPS), ("REFERENCE", REFERENCE)]
    for module, attr in OPTIONAL:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name is not None and module.startswith(e.name):
                continue  # the module (or its package) is not written yet
            raise
        tables.append((f"{module}.{attr}", getattr(mod, attr)))
    return tables


OP_TABLES = _discover()


@pytest.mark.parametrize("name, table", OP_TABLES, ids=[n for n, _ in OP_TABLES])
def test_table_covers_every_op_exactly(name: str, table: dict[Op, Any]) -> None:
    keys = list(table)
    assert all(isinstance(k, Op) for k in keys), f"{name} has keys that are not Op"
    assert len(keys) == len(set(keys))
    missing = sorted(o.value for o in set(Op) - set(keys))
    assert not missing, f"{name} has no entry for {missing}"
    assert len(keys) == len(Op)


def test_ops_entries_describe_their_key() -> None:
    for op, d in OPS.items():
        assert d.op is op
        assert d.min_operands >= 0
        assert d.max_operands is None or d.max_operands >= d.min_operands
        assert d.summary


def test_mnemonics_are_unique_lowercase() -> None:
    values = [o.value for o in Op]
    assert len(values) == len(set(values))
    assert all(v == v.lower() and v.replace("_", "").isalpha() for v in values)
