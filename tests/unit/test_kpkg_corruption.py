"""Every truncation and every flipped byte of a small package fails with a KpkgError."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from esperc.kpkg import KpkgError, KpkgTruncated, pack_kpkg, read_kpkg
from esperc.kpkg.format import FORMAT_VERSION, HEADER_SIZE, TRAILER_SIZE, assemble

MANIFEST = {
    "blueprint": {"name": "tiny", "ir_hash": "0" * 64},
    "kernels": {"k": {"source": "kernels/k.py", "config": {"BLOCK": 64}}},
    "perf": [],
}
MEMBERS = {
    "source.esp": b"blueprint tiny(x: f32[N]) -> f32[N] { return x }\n",
    "kernels/k.py": b"@triton.jit\ndef k(x): pass\n",
    "kernels/k.sm_90a.cubin": bytes(range(64)),
    "empty.txt": b"",
}
SAMPLE = pack_kpkg(MANIFEST, MEMBERS)


def _open_everything(blob: bytes) -> None:
    """Open, verify, and read every member: whatever fails must fail as a KpkgError."""
    pkg = read_kpkg(blob)
    for name in pkg.member_names():
        pkg.member(name)
    pkg.verify()


def test_sample_is_intact_and_small() -> None:
    _open_everything(SAMPLE)
    assert len(SAMPLE) < 4096


def test_truncation_at_every_offset() -> None:
    for length in range(len(SAMPLE)):
        with pytest.raises(KpkgTruncated):
            read_kpkg(SAMPLE[:length])


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "t.kpkg"
    for length in (0, 7, 50, HEADER_SIZE, len(SAMPLE) // 2, len(SAMPLE) - 1):
        path.write_bytes(SAMPLE[:length])
        with pytest.raises(KpkgTruncated, match="t.kpkg"):
            read_kpkg(path)


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_byte_flipped_is_detected(mask: int) -> None:
    for offset in range(len(SAMPLE)):
        blob = bytearray(SAMPLE)
        blob[offset] ^= mask
        with pytest.raises(KpkgError):
            read_kpkg(bytes(blob), verify=True)
        with pytest.raises(KpkgError):
            _open_everything(bytes(blob))


def test_appended_bytes_are_detected() -> None:
    for extra in (b"\x00", b"x" * 100):
        with pytest.raises(KpkgError, match="trailing"):
            read_kpkg(SAMPLE + extra)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_fail_cleanly(junk: bytes) -> None:
    for blob in (junk, SAMPLE[:12] + junk, SAMPLE[:HEADER_SIZE] + junk):
        with pytest.raises(KpkgError):
            _open_everything(blob)


toml_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.text(max_size=12), st.booleans(), st.just([])
)
_INFO = read_kpkg(SAMPLE).info("source.esp")
_START = len(SAMPLE) - TRAILER_SIZE - _INFO.compressed_size  # source.esp sorts last
GOOD_DATA = SAMPLE[_START : _START + _INFO.compressed_size]
GOOD_ENTRY = {**_INFO.to_toml(), "offset": 0}


def _with_entry(entry: dict, data: bytes) -> bytes:
    manifest = {"format_version": FORMAT_VERSION, "blueprint": {"name": "t"}, "members": [entry]}
    return assemble(tomli_w.dumps(manifest).encode(), [data])


def test_fuzz_baseline_is_valid() -> None:
    assert (
        read_kpkg(_with_entry(GOOD_ENTRY, GOOD_DATA)).member("source.esp") == MEMBERS["source.esp"]
    )


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from([*GOOD_ENTRY, "extra"]), toml_values, min_size=1),
    st.sampled_from([b"", GOOD_DATA]),
)
def test_rechecksummed_manifests_fail_only_with_kpkg_errors(fields: dict, data: bytes) -> None:
    """Manifests with valid checksums but edited member tables reach the schema checks."""
    try:
        _open_everything(_with_entry({**GOOD_ENTRY, **fields}, data))
    except KpkgError:
        pass
