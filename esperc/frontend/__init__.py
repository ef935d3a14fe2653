"""Front end: .esp text -> AST (``parse_file``/``parse_source``) -> graph IR (``lower``).

``dump_ast`` prints an AST for ``--emit ast``; every user error is raised as a
``DiagnosticError`` holding all diagnostics found.
"""

from __future__ import annotations

from esperc.frontend.ast import dump_ast
from esperc.frontend.lower import lower
from esperc.frontend.parser import parse_file, parse_source

__all__ = ["dump_ast", "lower", "parse_file", "parse_source"]
