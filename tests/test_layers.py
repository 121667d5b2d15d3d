"""The layering contract (ARCHITECTURE.md), checked by import-linter on every run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_layers_are_kept():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_a_qt_import_in_core_would_be_caught(tmp_path):
    """The contract is not vacuous: a copy of the package with Qt in core fails it."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "station", copy / "station", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    (copy / "station" / "core" / "leak.py").write_text("import PySide6.QtCore\nimport socket\n")
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, '.'); from importlinter.cli import lint_imports_command;"
         " lint_imports_command()", "--no-cache"],
        cwd=copy, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "station.core.leak -> PySide6" in out.stdout
    assert "station.core.leak -> socket" in out.stdout
