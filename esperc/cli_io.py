"""Terminal I/O of the CLI: colour choice, rich consoles, diagnostics output, atomic text writes,
and the ``guard`` that turns a command's outcome into the documented exit status."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esperc.diagnostics import Diagnostic, DiagnosticError, render_all, to_json

if TYPE_CHECKING:
    from rich.console import Console


class ColorMode(str, Enum):
    auto = "auto"
    always = "always"
    never = "never"


def use_color(mode: ColorMode, stream: Any) -> bool:
    """Colour when asked to, or in auto mode on a terminal with no NO_COLOR set."""
    if mode is ColorMode.always:
        return True
    if mode is ColorMode.never or os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


@dataclass
class UI:
    """Where a command's output goes; built once per command from its flags.

    ``out`` and ``err`` are rich consoles for tables and syntax, built on first use: importing
    rich costs about 20 ms, and most commands print plain lines only.
    """

    color: bool
    json: bool
    mode: ColorMode
    width: int | None
    sources: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def make(mode: ColorMode, json_mode: bool) -> UI:
        # Off a terminal (pipes, files, lit), tables get a fixed, readable width.
        width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 160
        return UI(color=use_color(mode, sys.stderr), json=json_mode, mode=mode, width=width)

    @functools.cached_property
    def out(self) -> Console:
        """The rich console on stdout."""
        return _console(self.mode, self.width, stderr=False)

    @functools.cached_property
    def err(self) -> Console:
        """The rich console on stderr."""
        return _console(self.mode, self.width, stderr=True)

    def add_source(self, path: str | Path, raw: bytes | None = None) -> None:
        """Remember a source's text so diagnostics can show its lines."""
        try:
            data = raw if raw is not None else Path(path).read_bytes()
        except OSError:
            return
        self.sources[str(path)] = data.decode("utf-8", errors="replace")

    def diagnostics(self, diags: Sequence[Diagnostic]) -> None:
        if self.json:
            sys.stderr.write(to_json(diags) + "\n")
        else:
            sys.stderr.write(render_all(diags, self.sources, self.color) + "\n")
        sys.stderr.flush()

    def print(self, text: str) -> None:
        """Plain data to stdout (never reformatted by rich)."""
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()

    def print_json(self, obj: Any) -> None:
        sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def note(self, text: str) -> None:
        """A one-line remark to stderr."""
        sys.stderr.write(text + "\n")

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Map user errors to exit 1, bad packages to 10-19, and crashes to an ICE (exit 3)."""
        from esperc.cli import EXIT_USER, internal_error

        try:
            yield
        except DiagnosticError as e:
            self.diagnostics(e.diagnostics)
            sys.exit(EXIT_USER)
        except (SystemExit, KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as e:  # noqa: BLE001 - classified below
            if _is_guard_error(e):  # tensors failing a guard: the user's inputs, not our bug
                from esperc.diagnostics import error

                self.diagnostics(error("E0501", str(e), None).diagnostics)
                sys.exit(EXIT_USER)
            code = _package_error_code(e)
            if code is not None:
                sys.stderr.write(f"esperc: error: {e}\n")
                sys.exit(code)
            from esperc.middle.pass_manager import PassCrash

            if isinstance(e, PassCrash):
                internal_error(e.cause, f"pass '{e.pass_name}'")
            internal_error(e)


def _console(mode: ColorMode, width: int | None, *, stderr: bool) -> Console:
    from rich.console import Console

    color = use_color(mode, sys.stderr if stderr else sys.stdout)
    return Console(stderr=stderr, markup=False, highlight=False, no_color=not color, soft_wrap=True,
                   width=width, force_terminal=color if mode is ColorMode.always else None)  # fmt: skip


def _is_guard_error(e: Exception) -> bool:
    # A GuardError can only exist once the interpreter module is loaded; importing it here
    # (and torch with it) would cost seconds on every failing command.
    interp = sys.modules.get("esperc.ir.interpreter")
    return interp is not None and isinstance(e, interp.GuardError)


def _package_error_code(e: Exception) -> int | None:
    """The exit status of a bad .kpkg (each ``KpkgError`` class has its own, 10-19)."""
    from esperc.kpkg import KpkgError

    return e.exit_code if isinstance(e, KpkgError) else None


def write_text_atomic(path: Path, text: str) -> None:
    """Write text to ``path`` via a temp file in the same folder, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def progress_bar(ui: UI, title: str) -> Iterator[Any]:
    """A rich progress bar on stderr fed by ``(description, done, total)`` callbacks.

    Quiet (a no-op callback) with ``--json`` or when stderr is not a terminal.
    """
    if ui.json or not sys.stderr.isatty():
        yield lambda *_: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"{title}: {{task.description}}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=ui.err, transient=True,
    ) as bar:  # fmt: skip
        tasks: dict[str, Any] = {}

        def report(desc: str, done: int, total: int) -> None:
            stage = desc.split(" ", 1)[0]
            if stage not in tasks:
                tasks[stage] = bar.add_task(desc, total=total)
            bar.update(tasks[stage], description=desc, completed=done, total=total)

        yield report
