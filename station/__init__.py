"""Inspection Station: an analyst workstation for security and clinical DICOM/DICOS.

Layers (enforced by import-linter, see pyproject.toml):
``station.core`` (data, store, no Qt, no sockets) <- ``station.net`` (DICOM networking)
<- ``station.ui`` (PySide6/pyqtgraph). Entry points live in ``station.app.cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inspection-station")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
