"""The code passes the linter, the formatter's check and the type checker configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mminterest.config import REPO_ROOT

BIN = REPO_ROOT / ".venv" / "bin"
CHECKS = {
    "ruff check": [str(BIN / "ruff"), "check", "."],
    "ruff format --check": [str(BIN / "ruff"), "format", "--check", "."],
    "mypy": [sys.executable, "-m", "mypy"],
}


@pytest.mark.parametrize("name", CHECKS)
def test_code_passes(name):
    done = subprocess.run(CHECKS[name], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
