"""The viewer's keys as named actions (``[viewer]`` in ``resources/keymap.toml``).

Every key of the slice viewer is an action with a name, a description for the cheat sheet
and a handler; which keys trigger it comes from the keymap, so a site or an analyst remaps
a viewer key exactly like a triage key (a user ``keymap.toml`` names only what it
changes). The handlers act on the pane under the mouse (``pane``). Inside the main window
the triage keys win (Qt shortcuts come before a widget's keys): that is why the default
presets are Alt+1..6 there, the next threat box Shift+N and the projection mode Shift+P.

GUI thread only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeyEvent, QKeySequence

if TYPE_CHECKING:  # the widget imports this module
    from station.ui.viewer.widget import SliceViewer

Handler = Callable[["SliceViewer", str], None]

#: What the mouse does, for the cheat sheet (not remappable).
MOUSE_HINTS = (
    ("Wheel", "scroll (projection: turn)"),
    ("Ctrl+wheel", "zoom"),
    ("Drag", "window level (right button), pan (middle)"),
)


@dataclass(frozen=True)
class ViewerAction:
    name: str
    description: str
    handler: Handler
    needs_image: bool = False


def _scroll(step: int, page: bool = False) -> Handler:
    def run(v: SliceViewer, pane: str) -> None:
        n = max(1, v._plane_count(pane) // 10) if page else 1
        v.userInteracted.emit()
        v._scroll_pane(pane, step * n, page=page)
    return run


def _jump(end: bool) -> Handler:
    def run(v: SliceViewer, pane: str) -> None:
        v.userInteracted.emit()
        v._jump_pane(pane, end)
    return run


def _preset(i: int) -> Handler:
    def run(v: SliceViewer, pane: str) -> None:
        v.userInteracted.emit()
        v._apply_preset(i, projection=pane == "projection")
    return run


def _auto_window(v: SliceViewer, pane: str) -> None:
    from station.ui.viewer.widget import auto_window

    values = v.panes[pane].modality_image()
    if pane == "projection":
        v._proj_window = auto_window(values)
    else:
        v._window = auto_window(values)
    v._apply_levels()


def _inverse(v: SliceViewer, pane: str) -> None:
    v.set_colormap("gray" if v._effective_colormap() == "inverse" else "inverse")


def _colormap(v: SliceViewer, pane: str) -> None:
    v._cycle_colormap()


def _layout(v: SliceViewer, pane: str) -> None:
    from station.ui.viewer.widget import LAYOUTS

    v.userInteracted.emit()
    v.set_layout(LAYOUTS[(LAYOUTS.index(v._layout) + 1) % len(LAYOUTS)])


def _next_view(v: SliceViewer, pane: str) -> None:
    visible = v.visible_panes
    v._set_active(visible[(visible.index(pane) + 1) % len(visible)])


def _slab(v: SliceViewer, pane: str) -> None:
    order = (None, "mip", "minip", "avg")
    v.set_slab(order[(order.index(v._slab_mode) + 1) % len(order)])


def _slab_step(sign: int) -> Handler:
    return lambda v, pane: v._step_slab(sign)


def _projection_mode(v: SliceViewer, pane: str) -> None:
    v.set_projection(mode="avg" if v._proj_mode == "mip" else "mip")


def _turn(sign: int) -> Handler:
    def run(v: SliceViewer, pane: str) -> None:
        from station.ui.viewer.widget import ROTATE_KEY_DEG

        v.userInteracted.emit()
        v.set_projection(v._proj_angle + sign * ROTATE_KEY_DEG)
    return run


def _threat_boxes(v: SliceViewer, pane: str) -> None:
    v.set_threats_visible(not v._threats_visible)


def _next_threat(v: SliceViewer, pane: str) -> None:
    v.userInteracted.emit()
    v.next_threat()


def _tool(name: str) -> Handler:
    return lambda v, pane: v.set_tool(None if v._tool == name else name)


def _clear_measure(v: SliceViewer, pane: str) -> None:
    v._measure = None
    v.clear_drawn_box()


def _crosshair(v: SliceViewer, pane: str) -> None:
    for p in v.panes.values():
        p.crosshair_visible = not p.crosshair_visible
        p.update_overlay()


def _zoom(factor: float) -> Handler:
    def run(v: SliceViewer, pane: str) -> None:
        v.userInteracted.emit()
        v._user_zoomed.add(pane)
        v.panes[pane].view.scaleBy((factor, factor))
    return run


def _fit(v: SliceViewer, pane: str) -> None:
    v._user_zoomed.clear()
    v._ranged = {}
    for name in v.visible_panes:
        v._auto_range_once(name)


def _help(v: SliceViewer, pane: str) -> None:
    v._help = not v._help
    v._update_overlay()


ACTIONS: tuple[ViewerAction, ...] = (
    ViewerAction("scroll_back", "Previous slice (projection: turn)", _scroll(-1)),
    ViewerAction("scroll_forward", "Next slice", _scroll(1)),
    ViewerAction("page_back", "A tenth of the slices back", _scroll(-1, page=True)),
    ViewerAction("page_forward", "A tenth of the slices on", _scroll(1, page=True)),
    ViewerAction("first", "First slice", _jump(False)),
    ViewerAction("last", "Last slice", _jump(True)),
    *(ViewerAction(f"preset_{i + 1}", "The series' own window" if i == 0 else f"Window preset {i + 1}",
                   _preset(i), needs_image=True) for i in range(6)),
    ViewerAction("auto_window", "Automatic window from the visible image", _auto_window, needs_image=True),
    ViewerAction("inverse", "Inverse grey", _inverse),
    ViewerAction("colormap", "Next colour map (material colours)", _colormap),
    ViewerAction("layout", "Next layout (one pane, MPR, quad)", _layout),
    ViewerAction("next_view", "Next pane", _next_view),
    ViewerAction("slab", "Slab: MIP / MinIP / average / off", _slab),
    ViewerAction("slab_thinner", "Thinner slab", _slab_step(-1)),
    ViewerAction("slab_thicker", "Thicker slab", _slab_step(1)),
    ViewerAction("projection_mode", "Projection: MIP / average", _projection_mode),
    ViewerAction("turn_left", "Turn the projection left", _turn(-1)),
    ViewerAction("turn_right", "Turn the projection right", _turn(1)),
    ViewerAction("threat_boxes", "Threat boxes on / off", _threat_boxes),
    ViewerAction("next_threat", "Centre the next threat box", _next_threat),
    ViewerAction("ruler", "Ruler", _tool("ruler")),
    ViewerAction("region", "Region statistics", _tool("roi")),
    ViewerAction("mark_box", "Mark a threat the machine missed: drag its box", _tool("mark"), needs_image=True),
    ViewerAction("clear_measure", "Clear the measurement and the marked box", _clear_measure),
    ViewerAction("crosshair", "Crosshair on / off", _crosshair),
    ViewerAction("zoom_in", "Zoom in", _zoom(0.8)),
    ViewerAction("zoom_out", "Zoom out", _zoom(1.25)),
    ViewerAction("fit", "Fit every pane again", _fit),
    ViewerAction("help", "Viewer help on / off", _help),
)
BY_NAME = {a.name: a for a in ACTIONS}

_IGNORED_MODIFIERS = Qt.KeyboardModifier.KeypadModifier


def event_sequences(event: QKeyEvent) -> list[str]:
    """The portable key texts an event may be bound as: with its modifiers, and (for a
    character typed with Shift, such as "?" or ">") without Shift."""
    key = event.key()
    if key in (Qt.Key.Key_unknown, Qt.Key.Key_Shift, Qt.Key.Key_Control, Qt.Key.Key_Alt, Qt.Key.Key_Meta):
        return []
    mods = event.modifiers() & ~_IGNORED_MODIFIERS
    texts = [QKeySequence(mods.value | key).toString(QKeySequence.SequenceFormat.PortableText)]
    if mods & Qt.KeyboardModifier.ShiftModifier:
        bare = mods & ~Qt.KeyboardModifier.ShiftModifier
        texts.append(QKeySequence(bare.value | key).toString(QKeySequence.SequenceFormat.PortableText))
    return texts


class KeyBindings:
    """Portable key text -> viewer action, from a keymap's ``viewer.*`` actions."""

    def __init__(self, keys: dict[str, list[str]]) -> None:
        self._by_key: dict[str, ViewerAction] = {}
        for action in ACTIONS:
            for text in keys.get(f"viewer.{action.name}", []):
                portable = QKeySequence(text).toString(QKeySequence.SequenceFormat.PortableText)
                self._by_key[portable or text] = action

    def action_for(self, event: QKeyEvent) -> ViewerAction | None:
        for text in event_sequences(event):
            if text in self._by_key:
                return self._by_key[text]
        return None
