"""The keymap: which keys trigger which action (``resources/keymap.toml`` plus overrides).

The default file is ``resources/keymap.toml``; a user file (``<user config dir>/keymap.toml``,
or the path in ``[ui] keymap``) overrides single actions. ``Keymap.bind`` gives a
``QAction`` its keys; the cheat sheet lists ``Keymap.rows()``. GUI thread (loading is
plain file reading and may happen anywhere).
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from platformdirs import user_config_dir
from PySide6.QtGui import QAction, QKeySequence

from station.core.resources import resource_path
from station.ui.viewer.actions import ACTIONS as VIEWER_ACTIONS
from station.ui.viewer.actions import MOUSE_HINTS

LOGGER = logging.getLogger(__name__)

APP_DIR_NAME = "inspection-station"
SECTIONS = ("triage", "window", "viewer")

#: What each action is for, as the cheat sheet says it.
DESCRIPTIONS = {
    "triage.clear": "Decide CLEAR, then the next pending scan",
    "triage.suspect": "Decide SUSPECT (manual search), then next",
    "triage.threat": "Decide THREAT (escalate), then next",
    "triage.accept_atr": "Accept the ATR: ALARM → SUSPECT, CLEAR → CLEAR",
    "triage.next": "Next pending scan",
    "triage.previous": "Back to the scan shown before",
    "triage.undo": "Undo the last decision (short window)",
    "triage.cheat_sheet": "This cheat sheet",
    "triage.next_alert": "Next alert of this scan",
    "triage.mark_threat": "Mark that alert THREAT",
    "triage.mark_clear": "Mark that alert NO_THREAT",
    "triage.note": "Note for the next decision",
    "triage.alarms_first": "Queue order: alarms first / arrival",
    "triage.statistics": "Shift statistics, export a report",
    "triage.sign_in": "Change operator",
    "window.quit": "Quit",
    "window.mute": "Mute / unmute the alarm sound",
    "window.routing_queue": "Routing queue",
    "window.refresh": "Re-read the store",
    "window.follow": "Follow new scans",
    "window.focus_scans": "Focus the scan list",
    "window.store_browser": "Local store browser",
    **{f"viewer.{a.name}": a.description for a in VIEWER_ACTIONS},
}

#: Main-window actions created elsewhere, by their text -> keymap name.
WINDOW_ACTIONS = {
    "Quit": "window.quit", "Mute alarm sound": "window.mute", "Routing queue": "window.routing_queue",
    "Refresh": "window.refresh", "Follow new scans": "window.follow", "Focus scan list": "window.focus_scans",
    "Local store": "window.store_browser",
}


class KeymapError(Exception):
    """A keymap file is unreadable or malformed."""


def default_user_keymap() -> Path:
    return Path(user_config_dir(APP_DIR_NAME, appauthor=False)) / "keymap.toml"


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeymapError(f"{path}: cannot read keymap: {exc}") from exc


@dataclass
class Keymap:
    """action name ("triage.clear", "viewer.fit") -> key sequences."""

    keys: dict[str, list[str]] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, user_file: str | Path | None = None) -> Keymap:
        """The default keymap with `user_file` (default: the user config dir's) on top.

        A missing user file is fine; a malformed one is logged and ignored (the station
        must still start with working keys)."""
        default = resource_path("keymap.toml")
        km = cls()
        km._merge(_read(default), default, strict=True)
        user = Path(user_file).expanduser() if user_file else default_user_keymap()
        if user.exists():
            try:
                km._merge(_read(user), user, strict=False)
            except KeymapError as exc:
                LOGGER.error("%s", exc)
                km.problems.append(str(exc))
        elif user_file:
            km.problems.append(f"{user}: keymap file not found")
            LOGGER.warning("keymap file not found: %s", user)
        return km

    def _merge(self, data: dict, origin: Path, *, strict: bool) -> None:
        self.sources.append(origin)
        for section, values in data.items():
            if section not in SECTIONS or not isinstance(values, dict):
                self._problem(f"{origin}: unknown keymap section [{section}]", strict)
                continue
            for name, value in values.items():
                full = f"{section}.{name}"
                if full not in DESCRIPTIONS:
                    self._problem(f"{origin}: unknown action {full!r}", strict)
                    continue
                seqs = [value] if isinstance(value, str) else value
                if not isinstance(seqs, list) or not all(isinstance(s, str) for s in seqs):
                    self._problem(f"{origin}: {full} must be a key sequence or a list of them", strict)
                    continue
                self.keys[full] = [s for s in seqs if s]

    def _problem(self, text: str, strict: bool) -> None:
        if strict:
            raise KeymapError(text)
        LOGGER.warning("%s", text)
        self.problems.append(text)

    def sequences(self, name: str) -> list[QKeySequence]:
        return [QKeySequence(s) for s in self.keys.get(name, [])]

    def bind(self, action: QAction, name: str) -> QAction:
        action.setShortcuts(self.sequences(name))
        keys = ", ".join(self.keys.get(name, []))
        if keys:
            action.setToolTip(f"{action.text()} ({keys})")
        return action

    def text(self, name: str) -> str:
        """The keys of an action as the cheat sheet shows them ("Space / N")."""
        return " / ".join(QKeySequence(s).toString(QKeySequence.SequenceFormat.NativeText) or s
                          for s in self.keys.get(name, [])) or "(unbound)"

    def rows(self) -> list[tuple[str, str, str]]:
        """(group, keys, what) for every key: triage, window, viewer, and the mouse."""
        out = [(n.split(".")[0].title(), self.text(n), DESCRIPTIONS[n])
               for n in DESCRIPTIONS if n in self.keys]
        out += [("Viewer", mouse, what) for mouse, what in MOUSE_HINTS]
        return out
