"""The esperc packages the benchmark times: built with the CLI, cold, or taken prebuilt.

A build runs ``python -m esperc compile BLUEPRINT.esp --target sm_XY -o KEY.kpkg --json`` (with
``--backward`` for a training row, whose KEY is ``NAME.train``) in a child process with the
kernel cache off (``ESPERC_NO_CACHE=1``) and an empty Triton cache, so the recorded time is a
cold compile: the CLI's own ``seconds`` (codegen, AOT compile, validation, packing) and the wall
time of the whole command (Python start and imports too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.specs import Spec

ROOT = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with the repository root first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def compile_command(spec: Spec, arch: str, out: Path) -> list[str]:
    """The CLI command that builds ``spec``'s package: a training package (``--backward``:
    forward and backward kernels) for a training row."""
    cmd = [sys.executable, "-m", "esperc", "compile", str(spec.path), "--target", arch,
           "-o", str(out), "--json", "--color", "never"]  # fmt: skip
    return cmd + ["--backward"] if spec.train else cmd


def build_package(
    spec: Spec, arch: str, out_dir: Path, timeout_s: float | None = None
) -> dict[str, Any]:
    """Compile ``spec``'s blueprint for ``arch`` into ``out_dir/KEY.kpkg`` (``NAME.kpkg``, or
    ``NAME.train.kpkg`` for a training row). The timeout defaults to 300 s, 600 s for a
    training package (validating the backward in the interpreter takes minutes for the MLPs).

    Returns a JSON-able dict: ``path`` (None when the build failed), ``compile_s`` (the CLI's
    build seconds), ``wall_s`` (the whole command), ``note`` and the CLI's ``summary``.
    """
    timeout_s = timeout_s or (600.0 if spec.train else 300.0)
    out = out_dir / f"{spec.key}.kpkg"
    cmd = compile_command(spec, arch, out)
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as cache:
        env = child_env(ESPERC_NO_CACHE="1", TRITON_CACHE_DIR=cache)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=timeout_s, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"path": None, "note": f"esperc compile timed out after {timeout_s:.0f} s",
                    "wall_s": time.perf_counter() - t0, "compile_s": None}  # fmt: skip
    wall = time.perf_counter() - t0
    info: dict[str, Any] = {"path": None, "wall_s": wall, "compile_s": None, "note": ""}
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        info["note"] = f"esperc compile exited {proc.returncode}: " + " | ".join(tail)[-400:]
        return info
    try:
        summary = json.loads(proc.stdout)
    except json.JSONDecodeError:
        summary = {}
    info.update(path=str(out), compile_s=summary.get("seconds", wall), summary=summary)
    info["note"] = validation_note(summary.get("kernels", []))
    return info


def validation_note(kernels: list[dict[str, Any]]) -> str:
    """A warning when kernels failed validation: the runtime runs those regions eagerly, so the
    package's time is then partly eager PyTorch's."""
    failed = [k.get("name", "?") for k in kernels if k.get("validation") == "fail"]
    if not failed:
        return ""
    return f"kernels {', '.join(failed)} failed validation and run as eager PyTorch regions"


def prebuilt(spec: Spec, kpkg_dir: Path) -> dict[str, Any]:
    """A package from ``--esperc-kpkg-dir``: ``KEY.kpkg`` (``NAME.kpkg``, or ``NAME.train.kpkg``
    for a training row), and its compile time from ``KEY.json`` (the CLI's ``--json`` output)
    when that file is there."""
    path = kpkg_dir / f"{spec.key}.kpkg"
    if not path.exists():
        return {"path": None, "compile_s": None, "wall_s": None, "note": f"no {path}"}
    meta = kpkg_dir / f"{spec.key}.json"
    seconds = None
    if meta.exists():
        try:
            seconds = json.loads(meta.read_text()).get("seconds")
        except (json.JSONDecodeError, OSError):
            seconds = None
    note = "prebuilt"
    try:
        from esperc.kpkg import read_kpkg

        manifest = read_kpkg(path).manifest
        if spec.train and "backward" not in manifest:
            note += "; NOT a training package (no [backward]: build it with --backward)"
        kernels = manifest.get("kernels", {}) | manifest.get("backward", {}).get("kernels", {})
        extra = validation_note([{"name": n, "validation": k.get("validation", {}).get("status")}
                                 for n, k in kernels.items()])  # fmt: skip
        note += f"; {extra}" if extra else ""
    except Exception as e:  # noqa: BLE001 - esperc.load reports a bad package as the peer's error
        note += f"; manifest unreadable ({type(e).__name__})"
    return {"path": str(path), "compile_s": seconds, "wall_s": None, "note": note}
