"""Command-line options that several ``esperc`` commands share (typer ``Annotated`` aliases), and
the parser of ``-D NAME=VALUE``. Imported by ``cli_app`` and the command modules it registers
(``cli_tune``, ``cli_kpkg``, ``cli_bench``), never by the fast path (``cli_fast``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from esperc.cli_io import ColorMode

ColorOpt = Annotated[
    ColorMode,
    typer.Option(
        "--color", help="Colour diagnostics: auto (a terminal and no NO_COLOR), always, never."
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Machine-readable output and diagnostics (JSON).")
]
DefineOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-D", help="Override an attr or resize a static dim: -D eps=1e-6, -D D=512 (repeatable)."
    ),
]
BlueprintOpt = Annotated[
    str | None, typer.Option("--blueprint", help="Which blueprint of the file.")
]
PrintIrAfterOpt = Annotated[
    str | None,
    typer.Option(
        "--print-ir-after", help="Print the IR after pass NAME, or after all passes, to stderr."
    ),
]
TimePassesOpt = Annotated[
    bool, typer.Option("--time-passes", help="Print the time each pass took.")
]
DumpDirOpt = Annotated[
    Path | None,
    typer.Option("--dump-dir", help="Write the IR after every pass into this folder."),
]
ExplainFusionOpt = Annotated[
    bool,
    typer.Option(
        "--explain-fusion", help="Explain each kernel-region boundary (fusion remarks, stderr)."
    ),
]
PrintLocOpt = Annotated[
    bool, typer.Option("--print-loc", help="Print source locations in IR output.")
]


def parse_defines(defines: list[str] | None) -> dict[str, str]:
    """``-D NAME=VALUE`` flags (or ``--dim NAME=VALUE``) as a mapping, values as written.

    Raises:
        typer.BadParameter: a flag without ``=`` or without a name (exit 2).
    """
    out: dict[str, str] = {}
    for d in defines or []:
        key, eq, value = d.partition("=")
        if not eq or not key.strip():
            raise typer.BadParameter(f"expected NAME=VALUE, got {d!r}", param_hint="-D")
        out[key.strip()] = value.strip()
    return out
