"""``python -m esperc.backend.triton FILE.eir [--plan]``: print the generated Triton module.

The input is IR text whose functions are partitioned into kernel regions; every function's
module is printed (``--plan`` appends each launch plan as comments). This is the entry point the
CLI's ``esperc codegen`` wraps; lit tests in tests/lit/backend use it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from esperc.backend.triton.emitter import generate
from esperc.diagnostics import DiagnosticError
from esperc.ir.graph import Func
from esperc.ir.parser import parse_module


def codegen_text(text: str, filename: str, plan: bool = False) -> str:
    """The generated module of every function in IR ``text``, separated by a blank line.

    Blueprint files named by ``loc(...)`` are read (as given, or next to ``filename``) so that the
    source-line comments quote them.
    """
    out = []
    for func in parse_module(text, filename):
        gen = generate(func, sources=_sources(func, Path(filename).parent))
        out.append(gen.source)
        if plan:
            out.extend(f"# plan: {step}" for step in gen.plan.steps)
    return "\n".join(out) + "\n"


def _sources(func: Func, base: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in func.body:
        if n.loc is None or n.loc.file in out or n.loc.file.endswith(".eir"):
            continue
        for cand in (Path(n.loc.file), base / n.loc.file):
            if cand.is_file():
                out[n.loc.file] = cand.read_text()
                break
    return out


def main(argv: list[str]) -> int:
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) != 1:
        print("usage: python -m esperc.backend.triton FILE.eir [--plan]", file=sys.stderr)
        return 2
    path = Path(paths[0])
    try:
        sys.stdout.write(codegen_text(path.read_text(), str(path), "--plan" in argv))
    except DiagnosticError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
