"""Objects written by the NEMA DICOS toolkit itself (``pydicos``), as a vendor's scanner and
ATR would send them: the reverse direction of issue 15. Only the toolkit's public API is
used, with its default transfer syntaxes (CTLoader.write: JPEG lossless; DX: JPEG
lossless; TDR: explicit little endian)."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path

import numpy as np
from pyDICOS import CT, DX, ErrorLog, Filename, Point3Dfloat, Vector3Dfloat, Volume
from pydicos import TDR_DATA_TEMPLATE, CTLoader, DXLoader, TDRLoader


def toolkit_ct(path: Path, voxels: np.ndarray, *, spacing=(1.0, 1.0, 2.0),
               position=(-50.0, -40.0, 100.0)) -> Path:
    """A one-section DICOS CT of uint16 ``voxels`` (z, y, x) with the toolkit's writer."""
    ct = CT(CT.OBJECT_OF_INSPECTION_TYPE.enumTypeBaggage, CT.OOI_IMAGE_CHARACTERISTICS.enumHighEnergy,
            CT.IMAGE_FLAVOR.enumVolume, CT.PHOTOMETRIC_INTERPRETATION.enumMonochrome2)
    ct.SetImageAcquisitionDuration(1.5)
    ct.SetNumberOfSections(1)
    section = ct.GetSectionByIndex(0)
    section.SetPlaneOrientation(Vector3Dfloat(1, 0, 0), Vector3Dfloat(0, 1, 0))
    section.SetPositionInMM(*position)
    section.SetSpacingInMM(spacing[0], spacing[1], spacing[2])
    section.SetSliceThickness(abs(spacing[2]))
    nz, ny, nx = voxels.shape
    volume = section.GetPixelData()
    volume.Allocate(Volume.IMAGE_DATA_TYPE.enumUnsigned16Bit, nx, ny, nz)
    data = volume.GetUnsigned16()
    for k in range(nz):
        plane = data.GetSlice(k)  # the slice itself (indexing returns a copy)
        view = np.array(plane, copy=False)
        assert view.shape == (ny, nx), view.shape
        view[:] = voxels[k]
    _write(ct, path, CT.TRANSFER_SYNTAX.enumLosslessJPEG)  # CTLoader.write's default
    return path


def toolkit_dx(path: Path, image: np.ndarray) -> Path:
    """A DICOS DX For Presentation of uint16 ``image`` (rows, cols)."""
    dx = DX(CT.OBJECT_OF_INSPECTION_TYPE.enumTypeBaggage, DX.PRESENTATION_INTENT_TYPE.enumPresentation,
            DX.PIXEL_DATA_CHARACTERISTICS.enumOriginal, CT.PHOTOMETRIC_INTERPRETATION.enumMonochrome2)
    rows, cols = image.shape
    pixels = dx.GetXRayData()
    pixels.Allocate(Volume.IMAGE_DATA_TYPE.enumUnsigned16Bit, cols, rows)
    plane = pixels.GetUnsigned16()
    view = np.array(plane, copy=False)
    assert view.shape == (rows, cols), view.shape
    view[:] = image
    dx.SetKVP(140.0)
    dx.SetImageOrientation(Vector3Dfloat(1, 0, 0), Vector3Dfloat(0, 1, 0))
    dx.SetImagePosition(Point3Dfloat(0, 0, 0))
    dx.SetXRayTubeCurrent(2.5)
    dx.SetWindowCenterAndWidth(2000, 4000)
    _write(dx, path, None)  # DX's default (JPEG lossless)
    return path


def _write(obj, path: Path, syntax) -> None:
    log = ErrorLog()
    args = (Filename(str(path)), log) if syntax is None else (Filename(str(path)), log, syntax)
    if not obj.Write(*args):
        raise RuntimeError(f"the toolkit could not write {path}: {log.GetErrorLog().Get()}")


def toolkit_tdr(path: Path, ct_path: Path, boxes: list[tuple[tuple[int, int, int], tuple[int, int, int]]],
                *, flags=None) -> Path:
    """A machine TDR for the toolkit CT at ``ct_path`` with one PTO per ``(base, extent)``
    box in voxels (x, y, z), written by ``CTLoader.generate_tdr`` as an ATR would."""
    from pyDICOS import ALARM_DECISION, ASSESSMENT_FLAG, SCAN_TYPE, THREAT_CATEGORY

    data = copy.deepcopy(TDR_DATA_TEMPLATE)
    data["AlarmDecision"] = ALARM_DECISION.enumAlarm
    data["ImageScaleRepresentation"] = 1
    data["ScanType"] = SCAN_TYPE.enumOperational
    now = datetime.now()
    stamp = {"date": (now.year, now.month, now.day), "time": (now.hour, now.minute, now.second, 0)}
    data["ContentDateAndTime"] = data["AlarmDecisionDateTime"] = stamp
    data["ProcessingTime"] = 12.5
    data["ATR"] = {"manufacturer": "Toolkit ATR", "version": "9.9", "parameters": {"mode": "test"}}
    template = data["PTOs"][0]
    data["PTOs"] = []
    for i, ((x, y, z), (ex, ey, ez)) in enumerate(boxes, 1):
        pto = copy.deepcopy(template)
        pto["ID"] = i
        pto["Base"] = {"x": x, "y": y, "z": z}
        pto["Extent"] = {"x": ex, "y": ey, "z": ez}
        # generate_tdr wants (x, y, z) here (TDRLoader.set_data: (z, y, x)); all zero: no bitmap
        pto["Bitmap"] = np.zeros((ex, ey, ez), dtype=np.uint16)
        pto["Assessment"]["flag"] = (flags or {}).get(i, ASSESSMENT_FLAG.enumThreat)
        pto["Assessment"]["category"] = THREAT_CATEGORY.enumExplosive
        pto["Assessment"]["probability"] = 0.9
        pto["PTOProcessingTime"] = {"ProcessingStartTime": stamp, "ProcessingEndTime": stamp,
                                    "fTotalTimeMS": 5.0}
        del pto["ReferencedInstance"]  # generate_tdr references the CT itself
        data["PTOs"].append(pto)
    tdr = CTLoader(str(ct_path)).generate_tdr(data)
    for i in range(1, len(boxes) + 1):  # baggage PTOs need a mass and a density
        tdr.SetBaggagePTODetails(i, 250.0 * i, 1.6, 0)
    tdr.write(str(path))
    return path


def toolkit_read(kind: str, path: Path):
    """The toolkit's loader for ``kind`` (ct/dx/tdr) after reading ``path`` (raises
    RuntimeError with the toolkit's log when it refuses the file)."""
    loader = {"ct": CTLoader, "dx": DXLoader, "tdr": TDRLoader}[kind]()
    loader.read(str(path))
    return loader
