"""The ``esperc`` command line's entry point (``esperc = esperc.cli:main``).

``main`` first offers the command line to the kernel-cache fast path (``esperc.cli_fast``): a
plain ``esperc compile FILE [-o OUT] [--target T]`` whose package is cached is answered there
without loading typer, rich or pydantic (about 150 ms of imports). Every other command line goes
to the typer app (``esperc.cli_app``), built only then.

Data goes to stdout, diagnostics to stderr. Exit status: 0 success, 1 user error (a diagnostic),
2 command-line misuse, 3 internal compiler error, 10-19 a bad ``.kpkg`` (one code per error class,
see ``docs/kpkg.md``). Set ``ESPERC_BACKTRACE=1`` to see the Python traceback of an internal error.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, NoReturn

EXIT_USER, EXIT_USAGE, EXIT_ICE = 1, 2, 3


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry point. typer's standalone mode maps misuse to exit 2; every other escape
    is reported here as an internal compiler error (commands handle user errors themselves)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        from esperc.cli_fast import compile_hit

        if not compile_hit(args):
            from esperc.cli_app import run

            run(args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("esperc: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `esperc ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except BaseException as e:  # noqa: BLE001 - last resort: report as an internal error
        internal_error(e)
    sys.exit(0)


def internal_error(e: BaseException, where: str = "") -> NoReturn:
    """Print the internal-compiler-error banner (and, with ESPERC_BACKTRACE=1, the traceback)."""
    msg = f"{type(e).__name__}: {e}"
    print(
        f"esperc: internal compiler error{(' in ' + where) if where else ''}: {msg}",
        file=sys.stderr,
    )
    print("note: this is a bug in esperc, not in your blueprint; please report it with the input",
          file=sys.stderr)  # fmt: skip
    if os.environ.get("ESPERC_BACKTRACE") == "1":
        traceback.print_exception(e)
    else:
        print("note: set ESPERC_BACKTRACE=1 to see the backtrace", file=sys.stderr)
    sys.exit(EXIT_ICE)


def __getattr__(name: str) -> Any:
    # ``esperc.cli.app`` is still the typer app (tests drive it), but importing this module
    # must not build it: the fast path above runs without typer.
    if name == "app":
        from esperc.cli_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
