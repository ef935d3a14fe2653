"""The SSA graph IR: types, the op table, graphs, text form, verifier, hashing, JSON."""

from __future__ import annotations

from esperc.ir.builder import Builder
from esperc.ir.graph import Arg, DimDecl, Func, Module, Node, Region, Require
from esperc.ir.hashing import canonical_hash
from esperc.ir.ops import OPS, Op
from esperc.ir.parser import parse_func, parse_module
from esperc.ir.printer import print_func, print_module
from esperc.ir.types import DType, SymDim, TensorType, TypeRuleError
from esperc.ir.verifier import VerifyError, verify

__all__ = [
    "OPS",
    "Arg",
    "Builder",
    "DType",
    "DimDecl",
    "Func",
    "Module",
    "Node",
    "Op",
    "Region",
    "Require",
    "SymDim",
    "TensorType",
    "TypeRuleError",
    "VerifyError",
    "canonical_hash",
    "parse_func",
    "parse_module",
    "print_func",
    "print_module",
    "verify",
]
