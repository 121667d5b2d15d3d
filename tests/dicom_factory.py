"""Small DICOM files built with pydicom for tests that need a few specific instances.

(The realistic synthetic bags come from station.core.synth.bags; these are deliberately tiny
and fully controlled: chosen UIDs, positions and values.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def make_ct_files(
    folder: Path,
    n: int = 5,
    size: int = 16,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "BAG-0001",
    sop_class: str = CTImageStorage,
    sop_uids: list[str] | None = None,
    z0: float = 0.0,
    dz: float = 1.25,
) -> list[Path]:
    """Write `n` classic CT slices; slice k holds the constant value 10*k (before rescale)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for k in range(n):
        sop = sop_uids[k] if sop_uids else generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = patient_id
        ds.PatientName = "Test^Bag"
        ds.Modality = "CT"
        ds.StudyDate = "20261122"
        ds.StudyTime = "120000"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, z0 + k * dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = abs(dz)
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = 1
        ds.RescaleIntercept = 0
        ds.PixelData = np.full((size, size), 10 * k, dtype=np.int16).tobytes()
        path = folder / f"CT{k:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
