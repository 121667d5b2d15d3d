"""A synthetic clinical CT: a torso phantom in Hounsfield units, for clinic-mode viewing.

The airport synthesiser (``station.core.synth.bags``) makes bags in MHU; a clinic reading
station needs a patient-like series in HU (air -1000, fat about -100, water 0, soft
tissue 40-60, contrast-filled vessels about 200, bone 400-1000) to show its presets
(soft tissue, lung, bone, brain) and the radiological MPR convention. Deterministic for
a seed, vectorised per slice, no anatomy claims beyond "looks like a chest and upper
abdomen": lungs with vessels, heart, aorta, spine, ribs, liver, kidneys, a fat layer
and the table.

Geometry: LPS patient coordinates as DICOM uses them (x to the patient's left, y to the
back, z to the head); slices ascend in z; row 0 is anterior, column 0 the patient's
right, as a radiologist expects an axial slice on screen.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

LOGGER = logging.getLogger(__name__)

RESCALE_INTERCEPT = -1024  # stored = HU + 1024, the usual CT convention
FOV_MM = 400.0


def make_torso(size: int = 256, slices: int = 96, *, length_mm: float = 240.0, seed: int = 0) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(z, y, x) int16 HU voxels of a chest-to-upper-abdomen phantom and its spacing
    (z, y, x) in mm. The upper half in z is chest (lungs), the lower half abdomen."""
    rng = np.random.default_rng(seed)
    pixel = FOV_MM / size
    dz = length_mm / slices
    c = (np.arange(size) + 0.5) * pixel - FOV_MM / 2
    x = c[None, :]  # patient right (-) to left (+)
    y = c[:, None]  # anterior (-) to posterior (+)
    out = np.empty((slices, size, size), dtype=np.int16)

    def ellipse(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0

    body = ellipse(0, 10, 165, 115)
    muscle = ellipse(0, 10, 152, 103)
    table = (np.abs(y - 140) < 4) & (np.abs(x) < 190)
    spine_body = ellipse(0, 70, 19, 17)
    spine_core = ellipse(0, 70, 15, 13)
    canal = ellipse(0, 96, 8, 8)
    process = (np.abs(x) < 5) & (y > 100) & (y < 118)
    aorta = ellipse(20, 45, 12, 12)  # left of the spine
    for k in range(slices):
        z = (k + 0.5) / slices  # 0 at the bottom (abdomen), 1 at the top (chest)
        hu = np.full((size, size), -1000.0, dtype=np.float32)
        hu[table] = 150.0
        hu[body] = -100.0  # subcutaneous fat
        hu[muscle] = 45.0
        chest = z > 0.45
        if chest:
            # Lungs end in domes on the diaphragm (the middle of the range).
            grow = min(1.0, (z - 0.45) / 0.2) ** 0.5
            for side in (-1, 1):
                lung = ellipse(side * 72, 5, 58 * (0.6 + 0.4 * grow), 80 * (0.6 + 0.4 * grow))
                hu[lung] = -850.0
            # Vessels: small dense dots inside the lungs.
            vessel_rng = np.random.default_rng([seed, k // 3])
            for vx, vy in vessel_rng.uniform([-120, -60], [120, 70], size=(26, 2)):
                if abs(vx) > 25:
                    dot = ellipse(vx, vy, 2.5, 2.5)
                    hu[dot & (hu < -500)] = 40.0
            heart = ellipse(12, -10, 55 * grow + 10, 48 * grow + 8)
            hu[heart] = 50.0
            # Ribs: one pair every ~25 mm, as thin arcs along the body wall.
            if int(k * dz) % 25 < 6:
                rim = ellipse(0, 10, 148, 100) & ~ellipse(0, 10, 140, 92) & (y > -80)
                hu[rim] = 700.0
        else:
            liver = ellipse(-60, 0, 80, 75) & ~ellipse(-150, -60, 40, 40)
            hu[liver] = 62.0
            for side in (-1, 1):
                hu[ellipse(side * 62, 70, 22, 30)] = 30.0  # kidneys
            hu[ellipse(45, -20, 30, 25)] = -400.0  # gas in the bowel
        hu[aorta] = 200.0  # contrast
        hu[spine_body] = 700.0
        hu[spine_core] = 250.0
        hu[canal] = 15.0
        hu[process] = 600.0
        # A reconstruction kernel's softness, then noise: hard-edged ellipses look drawn.
        hu = ndimage.gaussian_filter(hu, 0.7)
        hu += rng.normal(0.0, 10.0, size=hu.shape).astype(np.float32)
        np.clip(hu, -1024, 3071, out=hu)
        out[k] = np.rint(hu).astype(np.int16)
    return out, (dz, pixel, pixel)


def write_torso(out_dir: str | Path, *, size: int = 256, slices: int = 96, seed: int = 0,
                patient_id: str = "MRN-000001", patient_name: str = "Phantom^Torso") -> list[Path]:
    """Write the phantom as a classic CT series (one file per slice, HU) and return the
    files in slice order."""
    voxels, (dz, dy, dx) = make_torso(size, slices, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(slices):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName = patient_id, patient_name
        ds.Modality = "CT"
        ds.BodyPartExamined = "CHEST"
        ds.SeriesDescription = "Synthetic torso phantom (HU)"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-FOV_MM / 2 + dx / 2, -FOV_MM / 2 + dy / 2, -dz * slices / 2 + k * dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = voxels.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = RESCALE_INTERCEPT, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = (voxels[k].astype(np.int32) - RESCALE_INTERCEPT).astype("<u2").tobytes()
        path = out / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    LOGGER.info("wrote %d phantom slices to %s", len(paths), out)
    return paths


__all__ = ["make_torso", "write_torso"]
