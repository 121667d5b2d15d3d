"""``station inspect --validate``: what a DICOS object lacks, in the NEMA DICOS toolkit's terms.

The reference reader is the NEMA DICOS toolkit (Stratovan's C++ library, wrapped by the
``pydicos`` package, MIT): the reader a scanner console, a central TDR archive or an Open
Threat Assessment platform validates with. Rather than re-stating its rules, the station
hands the file to the toolkit's loader for the object's SOP class (CT, DX, TDR) and reports
the toolkit's own messages ("Missing required attribute Scan Type [CS (4010, 1048)]"), so a
site can check a scanner's output before go-live and the station's own objects are held to
the same reader (tests/core/test_dicos_toolkit.py).

SOP classes the toolkit's Python loaders do not cover (AIT 2D/3D, QR...) are reported as
not validated, never as valid. Any thread; the toolkit reads the file itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pydicom

from station.core.dicom.files import expand_paths
from station.core.dicom.sopclasses import DICOS_SOP_CLASSES, DICOS_TDR

# SOP class -> the toolkit loader that reads it (names in ``pydicos``).
_LOADERS = {
    "1.2.840.10008.5.1.4.1.1.501.1": "CTLoader",  # DICOS CT Image Storage
    "1.2.840.10008.5.1.4.1.1.501.2.1": "DXLoader",  # DICOS DX For Presentation
    "1.2.840.10008.5.1.4.1.1.501.2.2": "DXLoader",  # DICOS DX For Processing
    DICOS_TDR: "TDRLoader",
}
_LINE = re.compile(r"^(Error|Warning):\s*(.*)$")


class ToolkitMissing(RuntimeError):
    """The NEMA DICOS toolkit (``pydicos``) is not installed."""


def _toolkit() -> Any:
    try:
        import pydicos
    except ImportError as exc:  # an install without the optional reader
        raise ToolkitMissing("validation needs the NEMA DICOS toolkit: pip install pydicos") from exc
    return pydicos


def toolkit_version() -> str:
    return str(getattr(_toolkit(), "__version__", "unknown"))


def _messages(log: str) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    warnings: list[str] = []
    for raw in log.replace("\r", "").splitlines():
        m = _LINE.match(raw.strip())
        if m:
            (errors if m.group(1) == "Error" else warnings).append(m.group(2))
    return errors, warnings


def validate_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``path`` with the toolkit's loader for its SOP class and report
    ``{"path", "sop_class_uid", "sop_class_name", "validator", "valid", "errors",
    "warnings"}``; ``valid`` is None when no toolkit loader covers the class. Raises
    ToolkitMissing when ``pydicos`` is not installed; a file that is not DICOM at all is
    an error entry, not an exception."""
    path = Path(path)
    out: dict[str, Any] = {"path": str(path), "errors": [], "warnings": []}
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        sop_class = str(ds.get("SOPClassUID", "") or getattr(ds, "file_meta", {}).get(
            "MediaStorageSOPClassUID", ""))
    except Exception as exc:  # pydicom's failures on arbitrary bytes are not enumerable
        out.update(valid=False, sop_class_uid="", errors=[f"not a DICOM file: {exc}"])
        return out
    out["sop_class_uid"] = sop_class
    out["sop_class_name"] = DICOS_SOP_CLASSES.get(sop_class, "")
    loader_name = _LOADERS.get(sop_class)
    if loader_name is None:
        out["valid"] = None
        out["validator"] = None
        out["warnings"] = [f"the NEMA DICOS toolkit has no reader for SOP class {sop_class or '?'} "
                           f"({out['sop_class_name'] or 'not DICOS'}): not validated"]
        return out
    pydicos = _toolkit()
    loader = getattr(pydicos, loader_name)()
    out["validator"] = f"pydicos {toolkit_version()} {loader_name}"
    try:
        loader.read(str(path))
    except RuntimeError as exc:  # the loaders raise RuntimeError with the toolkit's log
        errors, warnings = _messages(str(exc))
        out["errors"] = errors or [str(exc)]
        out["warnings"] = warnings
        out["valid"] = False
        return out
    out["valid"] = True
    return out


def validate_main(paths: list[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """``station inspect FILE... --validate``: one report per file (folders searched)."""
    return [validate_file(p) for p in expand_paths(paths, skip_suffixes=(".json",))]
