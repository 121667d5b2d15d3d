"""SOP class UIDs the station treats specially (DICOS), with their pydicom keywords."""

from __future__ import annotations

DICOS_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.501.1": "DICOSCTImageStorage",
    "1.2.840.10008.5.1.4.1.1.501.2.1": "DICOSDigitalXRayImageStorageForPresentation",
    "1.2.840.10008.5.1.4.1.1.501.2.2": "DICOSDigitalXRayImageStorageForProcessing",
    "1.2.840.10008.5.1.4.1.1.501.3": "DICOSThreatDetectionReportStorage",
    "1.2.840.10008.5.1.4.1.1.501.4": "DICOS2DAITStorage",
    "1.2.840.10008.5.1.4.1.1.501.5": "DICOS3DAITStorage",
    "1.2.840.10008.5.1.4.1.1.501.6": "DICOSQuadrupoleResonanceStorage",
}
DICOS_ROOT = "1.2.840.10008.5.1.4.1.1.501."
DICOS_TDR = "1.2.840.10008.5.1.4.1.1.501.3"


def is_dicos(sop_class_uid: str) -> bool:
    """True for any DICOS SOP class, including vendor sub-classes under 501."""
    return sop_class_uid.startswith(DICOS_ROOT)
