"""DICOS Threat Detection Reports (TDR): read them, write them, and inspect DICOS/DICOM files.

A scanner's threat recognition (ATR) sends a *machine* TDR with its potential threat
objects (PTOs: a voxel box in the scan, an optional bitmap and polygon, and an assessment);
the station's own detector writes one too (``write_machine_tdr``); the analyst's decision
is recorded as an *operator* TDR that references the machine TDR it reviews
(``write_operator_tdr``). The attributes follow DICOS v03 as summarised in
``shared/DOMAIN.md``.

Reading is tolerant of what vendor toolkits write (an extra file-meta element (0002,0004)
"V03", unknown tags such as (0008,2108) and (4300,0902), UIDs with leading-zero
components, ImageScaleRepresentation written as FD instead of DS, "GROUND TRUTH" with a
space) and strict about what a viewer needs: a malformed TDR raises ``TdrError`` whose
message names the file and the problem ("x.dcm: PTO 2 has no ThreatROIBase"), never a bare
KeyError, and affects nothing but that file.

Conventions
-----------
* PTO boxes are voxel coordinates (x, y, z) of the referenced image: ``base`` is the first
  voxel, ``extent`` the number of voxels along each axis (as ``station.core.synth.bags`` and the
  detectors use them). For a classic one-file-per-slice CT, z is the slice index in the
  series sorted along its normal (``station.core.imaging.volume``), and each PTO references the
  slice instances its box spans.
* ThreatROIBitmap: one bit per voxel of the box, x fastest, then y, then z, least
  significant bit first (the DICOM convention for bit-packed data); ``Pto.mask()`` unpacks
  it to a (z, y, x) bool array.
* Mass in grams, Density in g/cm^3, VolumeOfPTO in cm^3 (ml), processing times in
  milliseconds. ImageScaleRepresentation is written as 1: one unit of the PTO coordinates
  is one image voxel.
* The per-PTO processing times (4010,1080) start (DT), (4010,1081) end (DT) and
  (4010,1082) total (FL, ms) are missing from pydicom's dictionary; they are added once at
  import (``register_dicos_dictionary``) under the keywords ``PTOProcessingStartTime``,
  ``PTOProcessingEndTime`` and ``PTOTotalProcessingTime``, with the VRs the DICOS
  toolkits use. The code addresses them by tag, so a future pydicom that names them
  differently changes nothing.
* The operator's decision is carried in standard attributes, as any DICOS reader sees it:
  CLEAR = AlarmDecision CLEAR; THREAT = ALARM with a PTO flagged (HIGH_)THREAT; SUSPECT =
  ALARM with the PTOs UNKNOWN (unresolved: search the bag). Only an alarm with no PTO at all
  cannot say which, and the free-text note has no DICOS attribute: those two go in a private
  block (group 0011, creator "INSPECTION STATION"), which other readers ignore.
* Every object is written so that the NEMA DICOS toolkit's reader (``pydicos``) accepts it:
  DICOS version, General Equipment and OOI identity come from ``site.Site`` (``[site]``
  settings); ``validate`` runs the toolkit's reader for ``station inspect --validate``.

Threads: every function here is pure file or dataset work with no shared state (the
dictionary registration runs once at import), so any thread or worker process may call
them: the receiver's association threads (``read_tdr`` on an arriving TDR), detection
workers (``write_machine_tdr``), the GUI's background tasks (``write_operator_tdr``).
Never call them on the GUI thread for large files.
"""

from __future__ import annotations

from station.core.dicos.model import (
    ABILITY_ASSESSMENTS,
    ABORT_REASONS,
    ALARM_DECISIONS,
    ASSESSMENT_FLAGS,
    Algorithm,
    DicosError,
    OPERATOR_DECISIONS,
    Pto,
    ReferencedInstance,
    STATION_ALGORITHM,
    ScanRef,
    SupportsToPto,
    TDR_TYPES,
    THREAT_CATEGORIES,
    Tdr,
    TdrError,
    register_dicos_dictionary,
)
from station.core.dicos.reader import (
    inspect_file,
    inspect_main,
    read_tdr,
    tdr_from_dataset,
)
from station.core.dicos.writer import (
    operator_tdr_main,
    scan_ref_from_volume,
    write_machine_tdr,
    write_operator_tdr,
)

__all__ = [
    "ABILITY_ASSESSMENTS",
    "ABORT_REASONS",
    "ALARM_DECISIONS",
    "ASSESSMENT_FLAGS",
    "Algorithm",
    "DicosError",
    "OPERATOR_DECISIONS",
    "Pto",
    "ReferencedInstance",
    "STATION_ALGORITHM",
    "ScanRef",
    "SupportsToPto",
    "TDR_TYPES",
    "THREAT_CATEGORIES",
    "Tdr",
    "TdrError",
    "inspect_file",
    "inspect_main",
    "operator_tdr_main",
    "read_tdr",
    "register_dicos_dictionary",
    "scan_ref_from_volume",
    "tdr_from_dataset",
    "write_machine_tdr",
    "write_operator_tdr",
]
