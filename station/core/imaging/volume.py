"""One image series as a geometric volume that grows while the series arrives.

A slice viewer shows a CT series while its instances are still coming in (one by one, in
any order), and the ``station volume`` command needs the same series as one array with
its geometry. ``SeriesVolume`` serves both:

* ``add_file`` reads only the header of an instance (pixels are never read there) and
  inserts its slice, or all frames of a multi-frame instance (Enhanced CT, DICOS CT), at
  its place along the slice normal. File order and InstanceNumber do not decide the order:
  the projection of ImagePositionPatient on the normal of ImageOrientationPatient does.
* ``slice(k)`` / ``array()`` return modality values (rescale applied) as float32. Pixel
  data is read lazily: uncompressed little- or big-endian data is a ``numpy.memmap`` on
  the file at the pixel data offset, so a multi-GB scan costs no RAM until frames are
  touched; compressed data (RLE, JPEG, JPEG 2000...) is decoded one frame at a time with
  pydicom's decoders and the decoded frames are kept in an LRU bounded by bytes.

Threads: one writer (the thread feeding arriving files) plus any number of readers (GUI
thread, slicing workers). The writer publishes an immutable snapshot of the slice list
after every change, so readers never see a half-inserted state and never wait on header
parsing; the pixel cache has its own lock.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from station.core.dicom.files import expand_paths

LOGGER = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
"""Budget of the decoded-frame LRU (compressed data) of one volume."""

DEFAULT_MAX_OPEN_MAPS = 128
"""How many files one volume keeps memory-mapped at once. Each map holds a file
descriptor (mmap dups it), so a 2000-file classic series must not keep all of them."""

_DEFER_SIZE = 64 * 1024
"""Header values larger than this (private blobs, overlays) are not read at all."""

_ORIENTATION_TOL = 1e-3
"""Direction cosines are written with limited precision; closer than this is 'the same'."""

_SPACING_RTOL = 1e-3

_DICOS_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1.501."

_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}


class VolumeError(Exception):
    """A file cannot become (part of) the volume; the message names the file and why."""


@dataclass(frozen=True)
class SliceInfo:
    """One 2-D slice of a volume: which file and frame it comes from and where it lies.

    ``position_mm`` is ImagePositionPatient (x, y, z) of the slice's first pixel, or None
    for projection images (DX/CR) that have no position. ``rescale_slope`` and
    ``rescale_intercept`` turn stored values into modality values for this very slice
    (they may differ per frame in Enhanced/DICOS CT).
    """

    path: Path
    frame_index: int
    position_mm: tuple[float, float, float] | None
    instance_number: int | None
    sop_instance_uid: str
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0


@dataclass
class _PixelLayout:
    """Where and how the pixel data of one file is stored (found while reading its header)."""

    transfer_syntax: UID
    n_frames: int
    rows: int
    columns: int
    # "memmap": native data mapped directly; "decoder": pydicom decoder on the file
    # positioned at the value; "dataset": full dcmread (deflated files only).
    kind: str
    value_offset: int = 0
    dtype: np.dtype | None = None
    bits_shift: int = 0  # unused high bits to clear (Bits Allocated - Bits Stored)
    decode_opts: dict[str, Any] = field(default_factory=dict)
    # Filled on the first decode of an encapsulated file without a usable offset table.
    frame_table: tuple[list[int], list[int]] | None = None


@dataclass
class _FileHeader:
    """What ``add_file`` needs from one instance; built from its header alone."""

    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    modality: str
    rows: int
    columns: int
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    rescale_type: str
    window: tuple[float, float] | None
    photometric: str
    slices: list[SliceInfo]
    layout: _PixelLayout


# --------------------------------------------------------------------------- headers


def _float(value: Any) -> float | None:
    """First number of a DS/IS/FD value (multi-valued window values take the first)."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _item(ds: Dataset | None, keyword: str) -> Dataset | None:
    """First item of sequence ``keyword`` in ``ds``, or None."""
    if ds is None:
        return None
    seq = ds.get(keyword)
    if not seq:
        return None
    return seq[0]


def _fg(
    frame: Dataset | None, shared: Dataset | None, top: Dataset, seq_kw: str, attr_kw: str
) -> Any:
    """Functional-group lookup: per-frame item overrides shared, shared overrides top level."""
    for group in (frame, shared):
        macro = _item(group, seq_kw)
        if macro is not None:
            value = macro.get(attr_kw)
            if value is not None and value != "":
                return value
    return top.get(attr_kw)


def _native_dtype(bits_allocated: int, pixel_representation: int, little: bool) -> np.dtype | None:
    if bits_allocated not in (8, 16, 32, 64):
        return None
    kind = "i" if pixel_representation == 1 else "u"
    return np.dtype(f"{'<' if little else '>'}{kind}{bits_allocated // 8}")


def _pixel_layout(path: Path, ds: Dataset, head: bytes, pixel_tell: int, file_size: int) -> _PixelLayout:
    """Locate the pixel data value right after the header and decide how to read it."""
    meta = getattr(ds, "file_meta", None)
    implicit, little = ds.original_encoding
    tsyntax = UID(meta.get("TransferSyntaxUID", "") if meta is not None else "")
    if not tsyntax:
        # No file meta: pydicom guessed the encoding; name the matching syntax.
        tsyntax = pydicom.uid.ImplicitVRLittleEndian if implicit else (
            pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
        )
    rows, columns = int(ds.Rows), int(ds.Columns)
    n_frames = int(_float(ds.get("NumberOfFrames")) or 1)
    opts = as_pixel_options(ds, number_of_frames=n_frames)
    opts["transfer_syntax_uid"] = tsyntax

    if tsyntax == DeflatedExplicitVRLittleEndian:
        # The file position after reading is inside the inflated copy: no offsets to use.
        return _PixelLayout(tsyntax, n_frames, rows, columns, "dataset", decode_opts=opts)

    if len(head) < 8:
        raise VolumeError(f"{path}: no pixel data")
    endian = "<" if little else ">"
    group, elem = struct.unpack(f"{endian}HH", head[:4])
    tag = group << 16 | elem
    if tag not in _PIXEL_TAGS:
        raise VolumeError(f"{path}: no pixel data (found tag ({group:04X},{elem:04X}) instead)")
    if implicit:
        (length,) = struct.unpack(f"{endian}L", head[4:8])
        value_offset = pixel_tell + 8
        vr = "OW" if int(ds.get("BitsAllocated", 16)) > 8 else "OB"
    else:
        vr = head[4:6].decode("ascii", "replace")
        if vr in EXPLICIT_VR_LENGTH_32:
            if len(head) < 12:
                raise VolumeError(f"{path}: truncated pixel data element")
            (length,) = struct.unpack(f"{endian}L", head[8:12])
            value_offset = pixel_tell + 12
        else:
            (length,) = struct.unpack(f"{endian}H", head[6:8])
            value_offset = pixel_tell + 8
    opts["pixel_keyword"] = _PIXEL_TAGS[tag]
    opts["pixel_vr"] = vr

    if length == 0xFFFFFFFF:
        if not tsyntax.is_encapsulated:
            raise VolumeError(f"{path}: undefined-length pixel data in native syntax {tsyntax}")
        return _PixelLayout(
            tsyntax, n_frames, rows, columns, "decoder", value_offset=value_offset, decode_opts=opts
        )

    bits_allocated = int(ds.get("BitsAllocated", 16))
    bits_stored = int(ds.get("BitsStored", bits_allocated))
    if tag == 0x7FE00008:
        dtype: np.dtype | None = np.dtype(f"{endian}f4")
        bits_allocated = bits_stored = 32
    elif tag == 0x7FE00009:
        dtype = np.dtype(f"{endian}f8")
        bits_allocated = bits_stored = 64
    else:
        dtype = _native_dtype(bits_allocated, int(ds.get("PixelRepresentation", 0)), little)
    itemsize = dtype.itemsize if dtype is not None else max(1, bits_allocated // 8)
    expected = n_frames * rows * columns * itemsize
    if bits_allocated >= 8 and (length < expected or file_size < value_offset + expected):
        raise VolumeError(
            f"{path}: truncated pixel data ({min(length, file_size - value_offset)} bytes, "
            f"{expected} expected for {n_frames} frame(s) of {rows}x{columns})"
        )
    if dtype is None or (not little and bits_allocated == 8 and vr == "OW"):
        # Bit-packed or byte-swapped-words data: leave the unpacking to pydicom.
        return _PixelLayout(
            tsyntax, n_frames, rows, columns, "decoder", value_offset=value_offset, decode_opts=opts
        )
    return _PixelLayout(
        tsyntax,
        n_frames,
        rows,
        columns,
        "memmap",
        value_offset=value_offset,
        dtype=dtype,
        bits_shift=max(0, bits_allocated - bits_stored) if tag == 0x7FE00010 else 0,
        decode_opts=opts,
    )


def _read_header(path: str | os.PathLike[str]) -> _FileHeader:
    """Read one instance's header (never its pixels). Any thread; touches no shared state."""
    path = Path(path)
    try:
        with open(path, "rb") as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=_DEFER_SIZE)
            # stop_before_pixels leaves the file at the pixel data element's tag.
            pixel_tell = fp.tell()
            head = fp.read(12)
            file_size = os.fstat(fp.fileno()).st_size
    except OSError as exc:
        raise VolumeError(f"{path}: cannot read: {exc}") from exc
    except InvalidDicomError as exc:
        raise VolumeError(f"{path}: not a DICOM file: {exc}") from exc
    except Exception as exc:  # pydicom's failures on malformed input are not enumerable
        raise VolumeError(f"{path}: malformed DICOM header: {exc!r}") from exc
    try:
        return _header_from_dataset(path, ds, head, pixel_tell, file_size)
    except VolumeError:
        raise
    except Exception as exc:  # bad values (wrong VM, non-numbers) in vendor files
        raise VolumeError(f"{path}: unusable image header: {exc!r}") from exc


def _header_from_dataset(
    path: Path, ds: Dataset, head: bytes, pixel_tell: int, file_size: int
) -> _FileHeader:
    if "Rows" not in ds or "Columns" not in ds:
        raise VolumeError(f"{path}: not an image (no Rows/Columns)")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise VolumeError(f"{path}: {samples} samples per pixel; only grayscale volumes are supported")
    layout = _pixel_layout(path, ds, head, pixel_tell, file_size)

    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    multi = shared is not None or len(per_frame) > 0
    if multi and per_frame and len(per_frame) != layout.n_frames:
        raise VolumeError(
            f"{path}: {len(per_frame)} per-frame functional group items for "
            f"{layout.n_frames} frames"
        )

    def frame_group(i: int) -> Dataset | None:
        return per_frame[i] if i < len(per_frame) else None

    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    if not sop_uid:
        raise VolumeError(f"{path}: no SOPInstanceUID")
    number = _float(ds.get("InstanceNumber"))
    # A malformed InstanceNumber only costs tie-breaking, never the whole file.
    instance_number = int(number) if number is not None and math.isfinite(number) else None

    first = frame_group(0)
    orientation = _floats(_fg(first, shared, ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    spacing = _floats(_fg(first, shared, ds, "PixelMeasuresSequence", "PixelSpacing"), 2)
    if spacing is None:
        # Projection radiographs only carry the detector spacing.
        spacing = _floats(ds.get("ImagerPixelSpacing"), 2)
    thickness = _float(_fg(first, shared, ds, "PixelMeasuresSequence", "SliceThickness"))
    rescale_type = str(_fg(first, shared, ds, "PixelValueTransformationSequence", "RescaleType") or "")
    center = _float(_fg(first, shared, ds, "FrameVOILUTSequence", "WindowCenter"))
    width = _float(_fg(first, shared, ds, "FrameVOILUTSequence", "WindowWidth"))

    slices: list[SliceInfo] = []
    for i in range(layout.n_frames):
        group = frame_group(i)
        if multi and i > 0 and group is not None:
            other = _floats(
                _fg(group, shared, ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6
            )
            if not _same_orientation(orientation, other):
                raise VolumeError(f"{path}: frame {i} has orientation {other}, frame 0 has {orientation}")
        if multi:
            position = _floats(_fg(group, shared, ds, "PlanePositionSequence", "ImagePositionPatient"), 3)
        else:
            position = _floats(ds.get("ImagePositionPatient"), 3) if layout.n_frames == 1 else None
        slope = _float(_fg(group, shared, ds, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(_fg(group, shared, ds, "PixelValueTransformationSequence", "RescaleIntercept"))
        slices.append(
            SliceInfo(
                path=path,
                frame_index=i,
                position_mm=position,  # type: ignore[arg-type]
                instance_number=instance_number,
                sop_instance_uid=sop_uid,
                rescale_slope=1.0 if slope is None else slope,
                rescale_intercept=0.0 if intercept is None else intercept,
            )
        )

    return _FileHeader(
        path=path,
        sop_instance_uid=sop_uid,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        rows=layout.rows,
        columns=layout.columns,
        orientation=orientation,
        pixel_spacing=spacing,  # type: ignore[arg-type]
        slice_thickness=thickness,
        rescale_type=rescale_type.strip().upper(),
        window=(center, width) if center is not None and width is not None and width > 0 else None,
        photometric=str(ds.get("PhotometricInterpretation", "") or ""),
        slices=slices,
        layout=layout,
    )


def _same_orientation(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return max(abs(x - y) for x, y in zip(a, b)) <= _ORIENTATION_TOL


def _same_spacing(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(math.isclose(x, y, rel_tol=_SPACING_RTOL) for x, y in zip(a, b))


def _normal(orientation: tuple[float, ...] | None) -> np.ndarray:
    if orientation is None:
        return np.array([0.0, 0.0, 1.0])
    n = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    norm = float(np.linalg.norm(n))
    return n / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


# --------------------------------------------------------------------------- pixels


class _PixelCache:
    """Per-volume cache of pixel sources: open memmaps (bounded by count, because each
    holds a file descriptor and its pages are the kernel's reclaimable page cache) and
    decoded frames (bounded by bytes). Any thread may call it."""

    def __init__(self, max_bytes: int, max_maps: int) -> None:
        self.max_bytes = max_bytes
        self.max_maps = max(1, max_maps)
        self._lock = threading.Lock()
        self._maps: OrderedDict[Path, np.memmap] = OrderedDict()
        self._frames: OrderedDict[tuple[Path, int], np.ndarray] = OrderedDict()
        self._bytes = 0

    @property
    def decoded_bytes(self) -> int:
        return self._bytes

    def get_map(self, path: Path) -> np.memmap | None:
        with self._lock:
            m = self._maps.get(path)
            if m is not None:
                self._maps.move_to_end(path)
            return m

    def put_map(self, path: Path, m: np.memmap) -> None:
        with self._lock:
            self._maps[path] = m
            self._maps.move_to_end(path)
            # Dropping our reference closes the map once no caller holds a view of it.
            while len(self._maps) > self.max_maps:
                self._maps.popitem(last=False)

    def get_frame(self, key: tuple[Path, int]) -> np.ndarray | None:
        with self._lock:
            a = self._frames.get(key)
            if a is not None:
                self._frames.move_to_end(key)
            return a

    def put_frame(self, key: tuple[Path, int], a: np.ndarray) -> None:
        if a.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._frames.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._frames[key] = a
            self._bytes += a.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._frames.popitem(last=False)
                self._bytes -= dropped.nbytes


def _frame_table(fp: Any, value_offset: int, n_frames: int) -> tuple[list[int], list[int]] | None:
    """Offsets/lengths of frames when the Basic Offset Table is empty and there is one
    fragment per frame, so frame k is one seek away instead of a walk over k fragments."""
    fp.seek(value_offset)
    if parse_basic_offsets(fp):
        return None  # pydicom uses the Basic Offset Table itself
    start = fp.tell()
    n_fragments, positions = parse_fragments(fp)
    if n_fragments != n_frames:
        return None  # several fragments per frame: pydicom finds frame boundaries
    lengths = []
    for pos in positions:
        fp.seek(pos + 4)
        lengths.append(struct.unpack("<L", fp.read(4))[0])
    return [p - start for p in positions], lengths


# --------------------------------------------------------------------------- volume


@dataclass(frozen=True)
class _Snapshot:
    """Immutable published state: readers take one reference and use it throughout."""

    slices: tuple[SliceInfo, ...] = ()
    keys: tuple[tuple[Any, ...], ...] = ()
    projections: tuple[float, ...] = ()
    version: int = 0


@dataclass(frozen=True)
class _SeriesGeometry:
    rows: int
    columns: int
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    normal: np.ndarray
    positioned: bool
    modality: str
    sop_class_uid: str
    rescale_type: str
    window: tuple[float, float] | None
    photometric: str


class SeriesVolume:
    """Slices of one image series in geometric order; grows as instances arrive.

    Thread-safe for one writer + readers: ``add_file``/``add_files`` from one thread (a
    lock keeps accidental second writers correct, just serialised); ``slice``,
    ``raw_slice``, ``array`` and every property from any thread at any time. Indices refer
    to the snapshot current at the call; compare ``version`` to notice growth.
    """

    def __init__(
        self,
        series_uid: str | None = None,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_open_maps: int = DEFAULT_MAX_OPEN_MAPS,
    ) -> None:
        self._series_uid = series_uid
        self._write_lock = threading.Lock()
        self._geometry: _SeriesGeometry | None = None
        self._state = _Snapshot()
        self._sops: set[str] = set()
        self._layouts: dict[Path, _PixelLayout] = {}
        self._cache = _PixelCache(cache_bytes, max_open_maps)

    # ----------------------------------------------------------------- writing

    def add_file(self, path: str | os.PathLike[str]) -> int:
        """Add one instance (header read only); return how many slices it added.

        A SOPInstanceUID already present adds nothing (returns 0). Raises VolumeError if
        the file is unreadable, of another series, or its geometry does not fit. Writer
        thread only.
        """
        return self._add_header(_read_header(path))

    def add_files(self, paths: Iterable[str | os.PathLike[str]]) -> int:
        """Add several instances; stops at the first VolumeError (earlier files stay added)."""
        return sum(self.add_file(p) for p in paths)

    def _add_header(self, header: _FileHeader) -> int:
        with self._write_lock:
            return self._add_header_locked(header)

    def _add_header_locked(self, h: _FileHeader) -> int:
        if self._series_uid is None:
            self._series_uid = h.series_instance_uid
        elif h.series_instance_uid != self._series_uid:
            raise VolumeError(
                f"{h.path}: belongs to series {h.series_instance_uid!r}, "
                f"not to this volume's series {self._series_uid!r}"
            )
        if h.sop_instance_uid in self._sops:
            LOGGER.debug("%s: duplicate SOPInstanceUID %s ignored", h.path, h.sop_instance_uid)
            return 0
        positioned = [s.position_mm is not None for s in h.slices]
        if any(positioned) and not all(positioned):
            raise VolumeError(f"{h.path}: some frames have ImagePositionPatient and some do not")

        geo = self._geometry
        if geo is None:
            geo = _SeriesGeometry(
                rows=h.rows,
                columns=h.columns,
                orientation=h.orientation,
                pixel_spacing=h.pixel_spacing,
                slice_thickness=h.slice_thickness,
                normal=_normal(h.orientation),
                positioned=all(positioned),
                modality=h.modality,
                sop_class_uid=h.sop_class_uid,
                rescale_type=h.rescale_type,
                window=h.window,
                photometric=h.photometric,
            )
        else:
            self._check_fits(h, geo, all(positioned))

        state = self._state
        slices = list(state.slices)
        keys = list(state.keys)
        projections = list(state.projections)
        for s in h.slices:
            proj = float(np.dot(geo.normal, s.position_mm)) if s.position_mm is not None else 0.0
            # Ties (two acquisitions at one position) break the same way whatever the
            # arrival order, so the volume does not depend on network timing.
            key = (
                proj,
                s.instance_number if s.instance_number is not None else math.inf,
                s.sop_instance_uid,
                s.frame_index,
            )
            i = bisect.bisect_right(keys, key)
            keys.insert(i, key)
            slices.insert(i, s)
            projections.insert(i, proj)

        self._geometry = geo
        self._sops.add(h.sop_instance_uid)
        self._layouts[h.path] = h.layout
        self._state = _Snapshot(tuple(slices), tuple(keys), tuple(projections), state.version + 1)
        return len(h.slices)

    def _check_fits(self, h: _FileHeader, geo: _SeriesGeometry, positioned: bool) -> None:
        if (h.rows, h.columns) != (geo.rows, geo.columns):
            raise VolumeError(
                f"{h.path}: {h.rows}x{h.columns} pixels, series has {geo.rows}x{geo.columns}"
            )
        if not _same_orientation(h.orientation, geo.orientation):
            raise VolumeError(
                f"{h.path}: orientation {h.orientation} differs from series orientation "
                f"{geo.orientation}"
            )
        if not _same_spacing(h.pixel_spacing, geo.pixel_spacing):
            raise VolumeError(
                f"{h.path}: pixel spacing {h.pixel_spacing} differs from series spacing "
                f"{geo.pixel_spacing}"
            )
        if positioned != geo.positioned:
            raise VolumeError(
                f"{h.path}: ImagePositionPatient is {'present' if positioned else 'missing'} "
                f"but {'missing' if positioned else 'present'} in the series"
            )

    # ----------------------------------------------------------------- geometry

    @property
    def series_uid(self) -> str | None:
        return self._series_uid

    @property
    def version(self) -> int:
        """Increments on every change; a viewer redraws when it differs from its last."""
        return self._state.version

    @property
    def n_slices(self) -> int:
        return len(self._state.slices)

    def __len__(self) -> int:
        return self.n_slices

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x); (0, 0, 0) while empty."""
        geo = self._geometry
        n = len(self._state.slices)
        if geo is None or n == 0:
            return (0, 0, 0)
        return (n, geo.rows, geo.columns)

    @property
    def slices(self) -> list[SliceInfo]:
        """Slices in geometric order (ascending along the normal)."""
        return list(self._state.slices)

    @property
    def positions_along_normal_mm(self) -> tuple[float, ...]:
        """Projection of each slice's position on the normal, ascending; lets a viewer
        keep its place (in mm) when slices are inserted below it."""
        return self._state.projections

    def nearest_slice(self, along_normal_mm: float) -> int:
        """Index of the slice closest to a position on the normal (-1 while empty)."""
        proj = self._state.projections
        if not proj:
            return -1
        i = bisect.bisect_left(proj, along_normal_mm)
        if i == 0:
            return 0
        if i == len(proj):
            return len(proj) - 1
        return i if proj[i] - along_normal_mm < along_normal_mm - proj[i - 1] else i - 1

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """(z, y, x): z is the median step between slice positions along the normal
        (SliceThickness is not the spacing when slices overlap or have gaps); y/x are
        PixelSpacing (row spacing, column spacing). 1.0 where the header says nothing."""
        geo = self._geometry
        if geo is None:
            return (1.0, 1.0, 1.0)
        dy, dx = geo.pixel_spacing if geo.pixel_spacing is not None else (1.0, 1.0)
        dz: float | None = None
        proj = self._state.projections
        if geo.positioned and len(proj) > 1:
            steps = np.diff(np.asarray(proj))
            steps = steps[steps > 1e-4]  # coincident slices say nothing about spacing
            if steps.size:
                dz = float(np.median(steps))
        if dz is None:
            dz = geo.slice_thickness if geo.slice_thickness else 1.0
        return (dz, float(dy), float(dx))

    @property
    def uniform_spacing(self) -> bool:
        """False when slice steps vary by more than 1% of the median (gaps, missing
        slices still in flight, variable pitch): resampling then needs care."""
        proj = self._state.projections
        if len(proj) < 3:
            return True
        steps = np.diff(np.asarray(proj))
        dz = self.spacing_mm[0]
        return bool(np.all(np.abs(steps - dz) <= 0.01 * dz))

    @property
    def origin_mm(self) -> tuple[float, float, float]:
        """(x, y, z) of the first slice's first pixel (lowest along the normal)."""
        slices = self._state.slices
        if not slices or slices[0].position_mm is None:
            return (0.0, 0.0, 0.0)
        return tuple(float(v) for v in slices[0].position_mm)  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 rows: row direction (increasing column index), column direction
        (increasing row index), slice normal. Identity without ImageOrientationPatient."""
        geo = self._geometry
        if geo is None or geo.orientation is None:
            return np.eye(3)
        return np.array([geo.orientation[:3], geo.orientation[3:], geo.normal], dtype=float)

    @property
    def rescale_type(self) -> str:
        """Units of the modality values: "HU", "MHU" (DICOS), other vendor codes as
        written, or "". DICOM CT without an explicit RescaleType is HU by definition; a
        DICOS CT without one stays "" because DICOS scanners may use MHU."""
        geo = self._geometry
        if geo is None:
            return ""
        if geo.rescale_type:
            return geo.rescale_type
        dicos = geo.sop_class_uid.startswith(_DICOS_STORAGE_ROOT)
        return "HU" if geo.modality == "CT" and not dicos else ""

    @property
    def default_window(self) -> tuple[float, float] | None:
        """(center, width) from the first instance's VOI attributes, or None."""
        geo = self._geometry
        return geo.window if geo is not None else None

    @property
    def modality(self) -> str:
        geo = self._geometry
        return geo.modality if geo is not None else ""

    @property
    def sop_class_uid(self) -> str:
        geo = self._geometry
        return geo.sop_class_uid if geo is not None else ""

    @property
    def photometric_interpretation(self) -> str:
        """MONOCHROME1 means the display must invert (high values dark)."""
        geo = self._geometry
        return geo.photometric if geo is not None else ""

    # ----------------------------------------------------------------- pixels

    @property
    def cache_bytes(self) -> int:
        """Bytes of decoded (compressed-source) frames currently cached."""
        return self._cache.decoded_bytes

    def raw_slice(self, k: int) -> np.ndarray:
        """Stored values of slice k (no rescale), read-only. For uncompressed files this
        is a view of a ``numpy.memmap``; otherwise a cached decoded frame. Any thread."""
        return self._raw(self._state.slices[k], cache=True)

    def stored_slice(self, k: int | SliceInfo) -> tuple[np.ndarray, float, float]:
        """Slice ``k`` as ``(values, slope, intercept)``: modality = values * slope + intercept.

        For viewers and reslicers that keep voxels at their stored size (2 bytes for
        16-bit CT) instead of float32, and fold the rescale into display levels. ``k`` is
        an index in the current order or a ``SliceInfo`` taken from ``slices`` (which
        stays valid while other slices are inserted). The values are ``raw_slice`` (a
        zero-copy memmap view when uncompressed) unless the file has unused high bits to
        clear, which needs a copy. Read-only. Any thread.
        """
        s = k if isinstance(k, SliceInfo) else self._state.slices[k]
        raw = self._raw(s, cache=True)
        shift = self._layouts[s.path].bits_shift
        if shift:
            raw = np.right_shift(np.left_shift(raw, shift), shift)
            raw.flags.writeable = False
        return raw, s.rescale_slope, s.rescale_intercept

    def slice(self, k: int) -> np.ndarray:
        """Slice k as 2-D (y, x) float32 modality values (rescale applied). Any thread."""
        s = self._state.slices[k]
        geo = self._geometry
        assert geo is not None
        out = np.empty((geo.rows, geo.columns), dtype=np.float32)
        self._fill(s, out, cache=True)
        return out

    def array(self) -> np.ndarray:
        """The whole volume as (z, y, x) float32 modality values, ascending along the
        normal. Fills one preallocated array, and does not push decoded frames through
        the cache (that would double the peak), so the peak stays near the result's size.
        Call off the GUI thread for large volumes."""
        slices = self._state.slices
        geo = self._geometry
        if geo is None or not slices:
            return np.empty((0, 0, 0), dtype=np.float32)
        out = np.empty((len(slices), geo.rows, geo.columns), dtype=np.float32)
        for i, s in enumerate(slices):
            self._fill(s, out[i], cache=False)
        return out

    def iter_slices(self) -> Iterator[np.ndarray]:
        """Slices in order as float32, one at a time (for streaming consumers)."""
        for k in range(len(self._state.slices)):
            yield self.slice(k)

    def _fill(self, s: SliceInfo, out: np.ndarray, *, cache: bool) -> None:
        raw = self._raw(s, cache=cache)
        layout = self._layouts[s.path]
        if layout.bits_shift:
            # Bits above BitsStored may hold anything (PS3.5 8.1.1), as pydicom assumes too.
            raw = np.right_shift(np.left_shift(raw, layout.bits_shift), layout.bits_shift)
        if s.rescale_slope == 1.0:
            out[...] = raw
        else:
            np.multiply(raw, np.float32(s.rescale_slope), out=out, casting="unsafe")
        if s.rescale_intercept != 0.0:
            out += np.float32(s.rescale_intercept)

    def _raw(self, s: SliceInfo, *, cache: bool) -> np.ndarray:
        layout = self._layouts[s.path]
        if layout.kind == "memmap":
            m = self._cache.get_map(s.path)
            if m is None:
                m = np.memmap(
                    s.path,
                    dtype=layout.dtype,
                    mode="r",
                    offset=layout.value_offset,
                    shape=(layout.n_frames, layout.rows, layout.columns),
                )
                self._cache.put_map(s.path, m)
            return m[s.frame_index]
        key = (s.path, s.frame_index)
        frame = self._cache.get_frame(key)
        if frame is None:
            frame = self._decode(s.path, s.frame_index, layout)
            frame.flags.writeable = False  # shared by every reader of the cache
            if cache:
                self._cache.put_frame(key, frame)
        return frame

    def _decode(self, path: Path, index: int, layout: _PixelLayout) -> np.ndarray:
        """Decode one frame. Any thread; may run twice for one frame under contention,
        which only costs time."""
        try:
            if layout.kind == "dataset":
                ds = pydicom.dcmread(path)
                return np.asarray(pydicom.pixels.pixel_array(ds, index=index))
            with open(path, "rb") as fp:
                opts = dict(layout.decode_opts)
                if layout.transfer_syntax.is_encapsulated and "extended_offsets" not in opts:
                    if layout.frame_table is None and layout.n_frames > 1:
                        layout.frame_table = _frame_table(fp, layout.value_offset, layout.n_frames) or (
                            [],
                            [],
                        )
                    if layout.frame_table and layout.frame_table[0]:
                        opts["extended_offsets"] = layout.frame_table
                fp.seek(layout.value_offset)
                arr, _ = get_decoder(layout.transfer_syntax).as_array(fp, index=index, **opts)
                return arr
        except Exception as exc:  # decoder plugins raise anything from RuntimeError to ValueError
            raise VolumeError(f"{path}: cannot decode frame {index}: {exc!r}") from exc


# --------------------------------------------------------------------------- series helpers


class SliceNotLoaded(VolumeError):
    """The slice is known (its place and geometry) but its pixels have not arrived yet."""


class FrameVolume(SeriesVolume):
    """A series whose every slice is known up front and whose pixels arrive later, in
    any order: a remote series opened from its metadata while frames are fetched.

    The geometry and every property are those of ``SeriesVolume`` (same rules, same
    code); only the pixels differ. ``put(k, values)`` stores slice ``k`` (float32
    modality values, or a rendered 8-bit display image); until then ``stored_slice``,
    ``raw_slice`` and ``slice`` raise ``SliceNotLoaded`` and ``array`` has NaN there.
    Values that are whole numbers in int16 range are kept as int16 (CT in HU or MHU: half
    the memory of float32, exact). Thread-safe: one or more writers (fetch workers), any
    readers; ``version`` increments on every ``put``.
    """

    def __init__(
        self,
        series_uid: str,
        slices: Sequence[SliceInfo],
        *,
        rows: int,
        columns: int,
        orientation: tuple[float, ...] | None,
        pixel_spacing: tuple[float, float] | None,
        slice_thickness: float | None = None,
        modality: str = "",
        sop_class_uid: str = "",
        rescale_type: str = "",
        window: tuple[float, float] | None = None,
        photometric: str = "MONOCHROME2",
    ) -> None:
        super().__init__(series_uid, cache_bytes=0, max_open_maps=0)
        normal = _normal(orientation)
        positioned = bool(slices) and all(s.position_mm is not None for s in slices)
        self._geometry = _SeriesGeometry(
            rows=rows, columns=columns, orientation=orientation, pixel_spacing=pixel_spacing,
            slice_thickness=slice_thickness, normal=normal, positioned=positioned, modality=modality,
            sop_class_uid=sop_class_uid, rescale_type=rescale_type, window=window, photometric=photometric,
        )
        ordered = tuple(slices)
        projections = tuple(float(np.dot(normal, s.position_mm)) if s.position_mm is not None else 0.0
                            for s in ordered)
        self._state = _Snapshot(ordered, (), projections, 0)
        self._sops = {s.sop_instance_uid for s in ordered}
        self._index = {(s.sop_instance_uid, s.frame_index): i for i, s in enumerate(ordered)}
        self._frames: list[np.ndarray | None] = [None] * len(ordered)
        self._loaded = 0
        self._bytes = 0
        self.rendered = False  # True once a frame came as a rendered display image

    def add_file(self, path: str | os.PathLike[str]) -> int:
        raise VolumeError("a FrameVolume is filled with put(), not from files")

    # ----------------------------------------------------------------- writing

    def put(self, k: int, values: np.ndarray, *, rendered: bool = False) -> bool:
        """Store slice ``k``'s pixels; False if it was there already. Any thread."""
        geo = self._geometry
        assert geo is not None
        if values.shape != (geo.rows, geo.columns):
            raise VolumeError(f"slice {k}: {values.shape} pixels, series has {geo.rows}x{geo.columns}")
        stored = values
        if not rendered and values.dtype.kind == "f":
            small = values.astype(np.int16)
            if np.array_equal(small, values):
                stored = small
        stored = np.ascontiguousarray(stored)
        stored.flags.writeable = False
        with self._write_lock:
            if self._frames[k] is not None:
                return False
            self._frames[k] = stored
            self._loaded += 1
            self._bytes += stored.nbytes
            self.rendered = self.rendered or rendered
            state = self._state
            self._state = _Snapshot(state.slices, state.keys, state.projections, state.version + 1)
        return True

    # ----------------------------------------------------------------- state

    @property
    def loaded(self) -> int:
        """How many slices have their pixels."""
        return self._loaded

    @property
    def complete(self) -> bool:
        return self._loaded == len(self._frames)

    def has(self, k: int | SliceInfo) -> bool:
        i = self._position(k)
        return self._frames[i] is not None

    def missing(self) -> list[int]:
        """Indices of the slices still without pixels."""
        return [i for i, f in enumerate(self._frames) if f is None]

    @property
    def cache_bytes(self) -> int:
        return self._bytes

    @property
    def rescale_type(self) -> str:
        return "" if self.rendered else super().rescale_type

    # ----------------------------------------------------------------- pixels

    def _position(self, k: int | SliceInfo) -> int:
        if isinstance(k, SliceInfo):
            return self._index[(k.sop_instance_uid, k.frame_index)]
        return k

    def raw_slice(self, k: int) -> np.ndarray:
        return self._frame(k)

    def stored_slice(self, k: int | SliceInfo) -> tuple[np.ndarray, float, float]:
        return self._frame(k), 1.0, 0.0  # put() took modality values: no rescale left

    def slice(self, k: int) -> np.ndarray:
        return self._frame(k).astype(np.float32)

    def array(self) -> np.ndarray:
        geo = self._geometry
        assert geo is not None
        out = np.full((len(self._frames), geo.rows, geo.columns), np.nan, dtype=np.float32)
        for i, f in enumerate(self._frames):
            if f is not None:
                out[i] = f
        return out

    def _frame(self, k: int | SliceInfo) -> np.ndarray:
        i = self._position(k)
        frame = self._frames[i]
        if frame is None:
            raise SliceNotLoaded(f"slice {i} of series {self._series_uid} has not arrived yet")
        return frame


def _group_headers(paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> dict[str, list[_FileHeader]]:
    """Headers of the image files among ``paths`` by series key; unreadable and non-image
    files (TDRs, reports, DICOMDIR, stray files) are skipped with a log line."""
    groups: dict[str, list[_FileHeader]] = {}
    signatures: dict[str, list[tuple[Any, ...]]] = {}
    for path in sorted(set(expand_paths(paths))):
        try:
            h = _read_header(path)
        except VolumeError as exc:
            LOGGER.info("skipped: %s", exc)
            continue
        uid = h.series_instance_uid
        spacing = tuple(round(v, 3) for v in h.pixel_spacing) if h.pixel_spacing else None
        orient = tuple(round(v, 3) for v in h.orientation) if h.orientation else None
        sig = (h.rows, h.columns, orient, spacing)
        known = signatures.setdefault(uid, [])
        for i, other in enumerate(known):
            if other[:2] == sig[:2] and _same_orientation(other[2], sig[2]) and _same_spacing(other[3], sig[3]):
                break
        else:
            known.append(sig)
            i = len(known) - 1
        key = uid if i == 0 else f"{uid}#{i + 1}"
        groups.setdefault(key, []).append(h)
    return groups


def group_series(paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Split files (or folders, searched recursively) into image series.

    Keys are SeriesInstanceUIDs; when one UID mixes sizes or orientations (a localizer
    filed with its axial slices), the later geometries get keys ``f"{uid}#2"``, ``#3``...
    Files are visited in sorted path order so the keys do not depend on listing order.
    Reads headers only; any thread.
    """
    return {k: [h.path for h in hs] for k, hs in _group_headers(paths).items()}


def load_volume(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str], **kwargs: Any
) -> SeriesVolume:
    """Build the volume of exactly one series from files or folders (headers only; pixels
    stay lazy). Raises VolumeError when there is no image or more than one series."""
    groups = _group_headers(paths)
    if not groups:
        raise VolumeError("no readable image files in the given paths")
    if len(groups) > 1:
        summary = ", ".join(f"{k} ({len(v)} files)" for k, v in groups.items())
        raise VolumeError(f"{len(groups)} series found, expected one: {summary}")
    [headers] = groups.values()
    vol = SeriesVolume(headers[0].series_instance_uid, **kwargs)
    for h in headers:
        vol._add_header(h)
    return vol


__all__ = [
    "DEFAULT_CACHE_BYTES",
    "FrameVolume",
    "SeriesVolume",
    "SliceNotLoaded",
    "SliceInfo",
    "VolumeError",
    "group_series",
    "load_volume",
]
