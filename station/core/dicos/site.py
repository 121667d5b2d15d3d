"""Who wrote a DICOS object: the site identity, and the attributes every DICOS object needs.

The NEMA DICOS toolkit (the reference reader that scanner consoles, central TDR archives
and Open Threat Assessment platforms validate with; on PyPI as ``pydicos``) refuses an
object without a DICOS version in its file meta (0002,0004) and in (4010,103A), without
the General Equipment module (institution, station name, serial number, software
versions, date and time of last calibration), without the OOI ID's assigning authority
(0010,0021), a Scan ID (0020,0010), a Series Acquisition Status (4010,1044) or, where
a frame of reference is present, the Position Reference Indicator (0020,1040).

``Site`` holds what a site configures (``[site]`` in station.toml, see README); the
defaults let a fresh station write valid objects. A workstation has no detector to
calibrate: like the toolkit's own writer, the station writes the time of writing as the
last calibration unless ``[site] calibration`` names one.

What a scan already says about itself (its OOI ID, assigning authority, Scan ID, study
and frame of reference) is copied from the scan, never replaced by the site's values:
a TDR for a vendor's scan keeps the vendor's identifiers.

Pure functions on pydicom datasets; any thread.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset

from station.core.dicos.model import DICOS_VERSION

_FILE_META_DICOS_VERSION = 0x00020004


def _default_station_name() -> str:
    # SH: at most 16 characters.
    return (platform.node().split(".")[0] or "STATION").upper()[:16]


@dataclass(frozen=True)
class Site:
    """The checkpoint and workstation an object comes from (``[site]`` settings).

    ``institution_name``/``institution_address``: General Equipment (0008,0080/0081),
    also the Organization Name of an operator's Person Identification. ``station_name``
    (0008,1010, 16 characters), ``device_serial_number`` (0018,1000).
    ``ooi_id_assigning_authority`` (0010,0021): who issues OOI (bag) IDs when the scan
    names none. ``calibration``: date/time of last calibration (0018,1200/1201); None =
    the time the object is written.
    """

    institution_name: str = "Inspection Station"
    institution_address: str = "not configured"
    station_name: str = ""
    device_serial_number: str = "UNSET"
    ooi_id_assigning_authority: str = "INSPECTION STATION"
    calibration: datetime | None = None

    @property
    def resolved_station_name(self) -> str:
        return (self.station_name or _default_station_name())[:16]


DEFAULT_SITE = Site()


def set_file_meta_version(ds: Dataset) -> None:
    """(0002,0004) DICOS Version in the file meta, as the toolkit writes and requires it."""
    ds.file_meta.add_new(_FILE_META_DICOS_VERSION, "CS", DICOS_VERSION)


def set_dicos_common(ds: Dataset, site: Site, now: datetime, *, software_versions: list[str]) -> None:
    """The modules every DICOS object needs beyond its IOD's own: DICOS version, General
    Equipment, OOI assigning authority, Scan ID, acquisition status, instance creation,
    position reference. Values the dataset already holds (copied from a scan) are kept."""
    set_file_meta_version(ds)
    ds.DICOSVersion = DICOS_VERSION
    ds.InstitutionName = site.institution_name[:64]
    ds.InstitutionAddress = site.institution_address or "not configured"
    ds.StationName = site.resolved_station_name
    ds.DeviceSerialNumber = site.device_serial_number[:64] or "UNSET"
    ds.SoftwareVersions = [v[:64] for v in software_versions if v] or ["station"]
    calibrated = site.calibration or now
    ds.DateOfLastCalibration = calibrated.strftime("%Y%m%d")
    ds.TimeOfLastCalibration = calibrated.strftime("%H%M%S")
    if not ds.get("IssuerOfPatientID"):
        ds.IssuerOfPatientID = site.ooi_id_assigning_authority[:64]
    if not ds.get("StudyID"):
        # Scan ID (SH, one value): the OOI ID names the bag; fall back to a time stamp.
        ds.StudyID = (str(ds.get("PatientID", "")) or now.strftime("%H%M%S%f"))[:16]
    ds.AcquisitionStatus = "SUCCESSFUL"
    if "InstanceCreationDate" not in ds:
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
    if "FrameOfReferenceUID" in ds and "PositionReferenceIndicator" not in ds:
        ds.PositionReferenceIndicator = ""
