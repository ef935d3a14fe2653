"""Every diagnostic code is documented, and every code the sources emit is registered."""

from __future__ import annotations

import re
from pathlib import Path

from esperc.codes import CODES

ROOT = Path(__file__).resolve().parents[2]


def test_every_code_is_documented_in_errors_md() -> None:
    doc = (ROOT / "docs" / "errors.md").read_text()
    documented = set(re.findall(r"^### (E\d{4}):", doc, flags=re.M))
    assert documented == set(CODES), sorted(documented ^ set(CODES))


def test_every_code_used_in_the_sources_is_registered() -> None:
    used: set[str] = set()
    for path in (ROOT / "esperc").rglob("*.py"):
        used |= set(re.findall(r"[\"'](E\d{4})[\"']", path.read_text()))
    assert used <= set(CODES), sorted(used - set(CODES))


def test_codes_follow_the_phase_ranges() -> None:
    for code in CODES:
        assert re.fullmatch(r"E0[0-6]\d\d", code), code
