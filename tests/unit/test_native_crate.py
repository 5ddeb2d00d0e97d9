"""The Rust crate's own tests (``cargo test`` in native/: the router core's unit and
property tests, the control-message decoding against msgspec's bytes), run with the suite
so CI runs them. Skipped only where there is no cargo (then the native gateway is not built
either; under ANYCORE_REQUIRE_NATIVE the session stops before this, see tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CRATE = Path(__file__).resolve().parents[2] / "native"
CARGO = shutil.which("cargo") or next((str(p) for p in [Path.home() / ".cargo" / "bin" / "cargo"] if p.exists()), None)


@pytest.mark.skipif(CARGO is None, reason="no cargo: the native gateway is not built here")
def test_cargo_test_passes() -> None:
    result = subprocess.run([str(CARGO), "test", "--release", "--offline", "-q"], cwd=CRATE, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " passed;" in result.stdout and " 0 failed" in result.stdout, result.stdout[-2000:]
