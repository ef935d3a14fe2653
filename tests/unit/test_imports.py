"""Imports point one way: frontend -> ir <- middle <- backend <- runtime (docs: STYLE.md).

Every ``import`` in esperc/**/*.py (module level and inside functions, found with ``ast``) is
checked against the layer table below; ``diagnostics`` and ``codes`` are importable by all but
``kpkg``, which imports nothing from esperc and neither torch nor triton. ``cli``/``driver`` may
import anything, and only ``esperc/__main__.py`` (and the cli/driver themselves) import them.
Only ``esperc/frontend/parser.py`` imports lark; in ``esperc/ir`` only the eager interpreter
(``reference.py``, ``interpreter.py``) imports torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "esperc"
SHARED = {"diagnostics", "codes"}
ANY = "*"
# Layer -> the layers it may import (besides itself and SHARED).
ALLOWED: dict[str, set[str] | str] = {
    "diagnostics": {"codes"},
    "codes": set(),
    "ir": set(),
    "frontend": {"ir"},
    "middle": {"ir"},
    "backend": {"ir", "middle", "kpkg"},
    "runtime": {"ir", "backend", "kpkg", "middle"},
    "kpkg": set(),
    # Layers the style guide does not name yet; placed next to what they serve. Adjust here
    # (together with STYLE.md) rather than silently widening a named layer.
    "paths": set(),
    "cache": {"kpkg", "paths"},
    "tune": {"ir", "middle", "backend", "runtime", "kpkg", "cache", "paths"},
    "cli": ANY,
    "driver": ANY,
    # build.py / build_steps.py: the driver's back half (codegen -> cubins -> validation -> .kpkg)
    "build": {"ir", "middle", "backend", "runtime", "kpkg", "cache", "paths"},
    "__main__": ANY,
    # esperc/__init__.py: `esperc.load`, the training-side entry point, re-exports the runtime
    # lazily (inside the function, so `import esperc` stays light).
    "__init__": {"runtime"},
}
TOP_IMPORTERS = {"cli", "driver", "__main__", "build"}


def layer_of(path: Path) -> str:
    """The layer of a module file: its first component under esperc/ (cli_*.py count as cli)."""
    rel = path.relative_to(PKG)
    head = rel.parts[0].removesuffix(".py")
    if head.startswith("build"):
        return "build"
    return "cli" if head.startswith("cli") else head


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """Every imported module name (absolute), with its line; ``from esperc import x`` gives
    ``esperc.x``. ``module``: the file's dotted name (default: from its place under ROOT)."""
    tree = ast.parse(path.read_text(), str(path))
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names if base == "esperc"]
    return sorted(out)


def wrong_edges(src: str, imports: list[tuple[int, str]], where: str) -> list[str]:
    """The imports that a module of layer ``src`` may not make."""
    allowed = ALLOWED.get(src)
    if allowed is None:
        return [f"{where}: layer '{src}' is not in the layer table"]
    wrong = []
    for line, name in imports:
        dst = _target_layer(name)
        if dst is None or dst == src:
            continue
        if dst in SHARED and src != "kpkg":
            continue
        if dst in TOP_IMPORTERS and src not in TOP_IMPORTERS:
            wrong.append(f"{where}:{line}: imports {name} (only __main__ and cli/driver may)")
        elif allowed != ANY and dst not in allowed:
            wrong.append(f"{where}:{line}: {src} -> {dst} ({name})")
    return wrong


def _files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _target_layer(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "esperc" or len(parts) == 1:
        return None
    head = parts[1]
    if not (PKG / head).is_dir() and not (PKG / f"{head}.py").exists():
        return None  # an attribute of the root package, e.g. esperc.__version__
    if head.startswith("build"):
        return "build"
    return "cli" if head.startswith("cli") else head


def test_there_are_modules_to_check() -> None:
    files = _files()
    assert len(files) > 20
    assert any(imports_of(p) for p in files)


def test_layer_rule() -> None:
    wrong = []
    for path in _files():
        wrong += wrong_edges(layer_of(path), imports_of(path), str(path.relative_to(ROOT)))
    assert not wrong, "wrong import edges:\n" + "\n".join(wrong)


def test_checker_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n"
        "from . import writer\n"
        "def f():\n"
        "    from esperc.ir import types\n"
        "    from .. import diagnostics, middle\n"
        "    import torch\n"
    )
    names = [n for _, n in imports_of(probe, "esperc.kpkg.probe")]
    assert names == ["os", "esperc.kpkg", "esperc.ir", "esperc", "esperc.diagnostics",
                     "esperc.middle", "torch"]  # fmt: skip
    wrong = wrong_edges("kpkg", imports_of(probe, "esperc.kpkg.probe"), "probe")
    assert [w.split(" -> ")[1].split()[0] for w in wrong] == ["ir", "diagnostics", "middle"]
    assert wrong_edges("ir", [(1, "esperc.middle.passes")], "p") == [
        "p:1: ir -> middle (esperc.middle.passes)"
    ]
    assert wrong_edges("backend", [(1, "esperc.driver")], "p")
    assert not wrong_edges("runtime", [(1, "esperc.backend.triton"), (2, "esperc.codes")], "p")


def _third_party(path: Path) -> set[str]:
    return {name.split(".")[0] for _, name in imports_of(path)}


def test_only_the_frontend_parser_imports_lark() -> None:
    users = [p.relative_to(ROOT).as_posix() for p in _files() if "lark" in _third_party(p)]
    assert set(users) <= {"esperc/frontend/parser.py"}, users


def test_kpkg_imports_nothing_heavy() -> None:
    for p in (PKG / "kpkg").rglob("*.py"):
        bad = _third_party(p) & {"torch", "triton", "numpy", "lark"}
        assert not bad, f"{p.relative_to(ROOT)} imports {sorted(bad)}"


def test_ir_imports_torch_only_in_the_interpreter() -> None:
    users = {p.name for p in (PKG / "ir").glob("*.py") if _third_party(p) & {"torch", "triton"}}
    # The eager oracle and its comparison metric; the rest of the IR stays torch-free.
    assert users <= {"reference.py", "interpreter.py", "numerics.py"}, users


@pytest.mark.parametrize(
    "module, banned",
    [("esperc.kpkg", ("torch", "triton")), ("esperc.ir", ("torch", "triton")),
     ("esperc.ir.hashing", ("torch", "triton"))],
)  # fmt: skip
def test_import_in_a_fresh_interpreter_stays_light(module: str, banned: tuple[str, ...]) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {banned!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
