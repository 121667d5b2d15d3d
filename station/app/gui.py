"""Starting the GUI: one QApplication, the store, the receiver, the bridge and the window.

``run_gui`` owns every long-lived object of a GUI session and stops them, in order, when
the window closes: simulator, receiver, bridge, store. ``make_app`` is shared with the
tests and the screenshot tool so they all see the same theme.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence

import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtGui import QColor, QFont, QIcon, QPalette
from PySide6.QtWidgets import QApplication, QMessageBox

from station.core.config import Settings
from station.core.events import EventBus
from station.core.resources import resource_path
from station.core.store.store import Store
from station.ui.bridge import EventBridge
from station.ui.main_window import MainWindow

LOGGER = logging.getLogger(__name__)

APP_NAME = "Inspection Station"

# One palette for eight-hour shifts: dark gray surfaces (not black, which makes bright
# text glare), off-white text, a muted blue for selection so it does not shout.
_PALETTE = {
    QPalette.ColorRole.Window: "#2b2e33",
    QPalette.ColorRole.WindowText: "#d7dae0",
    QPalette.ColorRole.Base: "#25282c",
    QPalette.ColorRole.AlternateBase: "#2a2d32",
    QPalette.ColorRole.ToolTipBase: "#1f2226",
    QPalette.ColorRole.ToolTipText: "#d7dae0",
    QPalette.ColorRole.PlaceholderText: "#7f8690",
    QPalette.ColorRole.Text: "#d7dae0",
    QPalette.ColorRole.Button: "#33373d",
    QPalette.ColorRole.ButtonText: "#d7dae0",
    QPalette.ColorRole.BrightText: "#ffffff",
    QPalette.ColorRole.Highlight: "#2f5f8a",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.Link: "#4fb3ff",
    QPalette.ColorRole.Light: "#3a3e45",
    QPalette.ColorRole.Midlight: "#33373d",
    QPalette.ColorRole.Mid: "#2b2e33",
    QPalette.ColorRole.Dark: "#1d1f23",
    QPalette.ColorRole.Shadow: "#141518",
}


def apply_theme(app: QApplication) -> None:
    """Fusion style, dark palette, the station stylesheet and a readable base font."""
    app.setStyle("Fusion")
    palette = QPalette()
    for role, color in _PALETTE.items():
        palette.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b717a"))
    app.setPalette(palette)
    font = QFont(app.font())
    font.setPointSizeF(max(font.pointSizeF(), 10.0))
    app.setFont(font)
    try:
        app.setStyleSheet(resource_path("style.qss").read_text(encoding="utf-8"))
    except (FileNotFoundError, OSError) as exc:  # an unstyled station still works
        LOGGER.warning("no stylesheet: %s", exc)


def wait_until(app: QApplication, predicate: Callable[[], object], timeout_s: float, *, poll_s: float = 0.01) -> bool:
    """Process events until ``predicate()`` is true or ``timeout_s`` passed; its last value
    as a bool. For scripts driving the GUI (screenshots, benchmarks), never the app itself."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app.processEvents()
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())


def make_app(argv: Sequence[str] | None = None) -> QApplication:
    """Return the process's QApplication (creating it if needed), themed for the station."""
    # Row-major images match numpy's (y, x) slices: no transposes anywhere.
    pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)
    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv) if argv is not None else sys.argv[:1])
    assert isinstance(app, QApplication)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName(APP_NAME)
    app.setDesktopFileName("inspection-station")
    try:
        app.setWindowIcon(QIcon(str(resource_path("station.svg"))))
    except FileNotFoundError as exc:
        LOGGER.warning("no application icon: %s", exc)
    apply_theme(app)
    return app


def run_gui(
    settings: Settings,
    *,
    receiver: bool = True,
    simulator: bool = False,
    operator: str | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """Run the station GUI until the window closes; return the exit code. Main thread.

    The receiver runs as a child process (``station.app.receiver_process``) and starts
    before the window shows; if it cannot (port in use...), the window still opens and
    says why in the status bar and a message box. With `simulator`, a simulated scanner
    process sends bags to it. While the receiver process runs it owns the store's upkeep;
    the GUI opens the store without maintenance.
    """
    from station.net.dimse.receiver import ReceiverStartError
    from station.app.receiver_process import ReceiverProcess
    from station.net.dimse.simulator import SimulatorProcess

    app = make_app(argv)
    bus = EventBus()
    bridge = EventBridge(bus)
    rx: ReceiverProcess | None = None
    sim: SimulatorProcess | None = None
    store: Store | None = None
    start_error = ""
    try:
        if receiver:
            rx = ReceiverProcess(settings.store.path, bus, settings.receiver, config_path=settings.source)
            try:
                rx.start()
            except ReceiverStartError as exc:
                start_error = str(exc)
                LOGGER.error("receiver not started: %s", exc)
        store = Store(settings.store.path, maintenance=rx is None or not rx.is_running)
        window = MainWindow(store, bridge, settings, receiver=rx)
        if not operator:
            # Every decision is recorded under an operator ID: ask before the shift starts
            # (`station gui --operator ID` skips this). Cancel quits.
            from station.ui.triage.controller import ask_operator

            operator = ask_operator(None)
            if not operator:
                LOGGER.info("no operator signed in: quitting")
                window.close()
                return 1
        window.set_operator(operator)
        if simulator:
            if rx is not None and rx.is_running:
                sim = SimulatorProcess(rx.host, rx.port, rx.aet, settings.simulator)
                sim.start()
            else:
                LOGGER.warning("simulator not started: it needs a running receiver")
        window.show()
        if start_error:
            box = QMessageBox(QMessageBox.Icon.Warning, "Receiver not started",
                              f"The DICOM receiver could not start:\n\n{start_error}\n\n"
                              "Scans already in the store can still be viewed.",
                              QMessageBox.StandardButton.Ok, window)
            box.setObjectName("ReceiverStartError")
            box.open()  # window-modal and non-blocking: the event loop starts below
        restore_sigint = _install_sigint(app)
        try:
            return app.exec()
        finally:
            restore_sigint()
    finally:
        # Order matters: stop producers before the consumers they feed.
        if sim is not None:
            sim.stop()
        if rx is not None:
            rx.stop()
        bridge.close()
        if store is not None:
            store.close()


def _install_sigint(app: QApplication):
    """Let Ctrl+C in the terminal close the station cleanly; return a function that undoes it.

    Python only runs signal handlers between bytecodes; a short timer gives it that chance
    while Qt's event loop is in C++.
    """
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: app.closeAllWindows())
    except ValueError:  # not the main thread
        return lambda: None
    timer = QTimer(app)
    timer.timeout.connect(lambda: None)
    timer.start(250)

    def restore() -> None:
        timer.stop()
        timer.deleteLater()
        signal.signal(signal.SIGINT, previous)

    return restore
