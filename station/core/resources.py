"""One place that finds files in ``resources/``, from a source tree, an install or a freeze."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_dir() -> Path:
    """Return the folder holding the station's resources (icons, keymaps, .desktop file)."""
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return Path(frozen_root) / "resources"
    return Path(__file__).resolve().parents[2] / "resources"


def resource_path(name: str) -> Path:
    """Return the path of resource `name`; raise FileNotFoundError naming it if absent."""
    path = resources_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"station resource missing: {path}")
    return path


def station_command(*args: str) -> list[str]:
    """How to run a ``station`` subcommand from this interpreter or from a frozen build."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, "-m", "station", *args]
