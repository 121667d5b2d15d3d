"""DICOMweb client: QIDO-RS search, WADO-RS metadata, and frames on demand.

What the station needs from a remote archive, and nothing more:

* ``search_studies`` / ``search_series`` / ``search_instances`` (QIDO-RS) by ID, name,
  date range and modality, returning pydicom ``Dataset`` objects;
* ``series_metadata`` (WADO-RS metadata) as ``Dataset`` objects (bulk data not fetched);
* ``retrieve_frames``: pixel frames of one instance. A contiguous run of frame numbers
  is ONE request (``.../frames/3,4,5``): on loopback Orthanc serves 50 frames in one
  request in about the time of 4 single-frame requests. Scattered runs go out in
  parallel on a bounded pool. Every frame goes through the shared ``FrameCache`` (key:
  the frame's own URL plus the Accept value), so a cached frame never costs a request;
* ``retrieve_series_frames``: for classic series (one instance per slice), the pixel
  data of every instance from one series-level retrieve, cached as their frames;
* ``decode_frame``: bytes to a numpy array with pydicom's decoders (native, RLE, JPEG
  baseline/lossless, JPEG-LS, JPEG 2000), or Pillow for rendered images.

Negotiation. Frames are asked for as
``multipart/related; type="application/octet-stream"; transfer-syntax=*``: the server
may answer in the stored syntax (Orthanc sends RLE as ``image/dicom-rle`` and JPEG 2000
as ``image/jp2``) and we decode locally, which is cheaper for both sides than
transcoding. (Orthanc's plugin 1.7 answers 400 to a bare ``*/*``.) When the server
refuses raw frames of an instance (406/415/501, or Orthanc's 400/500 when it cannot
produce the syntax asked for) the client falls back to rendered frames
(``.../frames/N/rendered``, PNG): the result says ``rendered=True`` and the pixels are
display values, not modality values. An instance found to be rendered-only is
remembered, so later batches do not ask for raw frames again.

Errors are typed (``DicomWebError`` and subclasses below); every message names the URL,
never a credential (credentials live in ``requests`` auth objects, never in URLs).

Threads: every public method may be called from any thread at once. Each thread gets its
own ``requests.Session`` (requests does not promise a shared Session is thread-safe);
sessions keep their connections alive between requests and are closed by ``close()``.
The parallel-run pool is created on first use and shut down by ``close()``.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import numpy as np
import requests
import urllib3
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from requests.adapters import HTTPAdapter
from requests_toolbelt.multipart.decoder import (
    ImproperBodyPartContentException,
    MultipartDecoder,
    NonMultipartContentTypeException,
)
from urllib3.util.retry import Retry

from station.core.remote.framecache import FrameCache
from station.core.remote.remotes import RemoteSettings
from station.core.imaging.volume import VolumeError, _pixel_layout  # where pixel data starts in a Part 10 file

LOGGER = logging.getLogger(__name__)

# --------------------------------------------------------------------------- constants

ANY_TRANSFER_SYNTAX = "*"
"""Ask for frames in whatever syntax the server holds them (decoded here)."""

RAW_ACCEPT_ANY: str = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
"""The Accept value for raw frames in any transfer syntax."""

RENDERED_ACCEPT: str = "image/png"
"""Rendered frames: lossless 8-bit display values."""

DICOM_JSON_ACCEPT: str = "application/dicom+json"
INSTANCE_ACCEPT: str = 'multipart/related; type="application/dicom"; transfer-syntax=*'

DEFAULT_TIMEOUT_S: float = 30.0
"""Seconds a read may stall before the remote counts as unavailable."""

DEFAULT_CONNECT_TIMEOUT_S: float = 5.0
"""Seconds to open a connection; a dead host must fail fast, not hang the viewer."""

DEFAULT_MAX_WORKERS: int = 4
"""Parallel requests for scattered frame runs: more only queue up on a 2-core archive."""

MAX_FRAMES_PER_REQUEST: int = 64
"""Longer runs are split: a cancelled batch then wastes at most this many frames, and
one answer (64 x 512 KiB = 32 MiB) stays a reasonable buffer."""

RAW_REFUSED_STATUSES: frozenset[int] = frozenset({400, 406, 415, 500, 501})
"""Answers to a raw-frames request after which rendered frames are tried. 406/415/501
are the standard's 'cannot serve that media type'; Orthanc answers 400 when asked for a
syntax it will not produce and 500 when it cannot transcode (no codec). A genuine server
error is still reported: then the rendered attempt fails too and the raw error is raised."""

_READ_CHUNK = 4 << 20
_USER_AGENT = "inspection-station"

# Media types a raw frame may come in, with the transfer syntax assumed when the part
# does not name one (PS3.18 8.7.3.5.2 lists these as the defaults).
_FRAME_MEDIA_TYPES: dict[str, str] = {
    "application/octet-stream": ExplicitVRLittleEndian,
    "image/jpeg": JPEGBaseline8Bit,
    "image/jls": JPEGLSLossless,
    "image/jp2": JPEG2000Lossless,
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/dicom-rle": RLELossless,
    "image/x-dicom-rle": RLELossless,
}
_NATIVE_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian})
_SYNTAX_MEDIA_TYPE: dict[str, str] = {
    ExplicitVRLittleEndian: "application/octet-stream",
    ImplicitVRLittleEndian: "application/octet-stream",
    ExplicitVRBigEndian: "application/octet-stream",
    JPEGBaseline8Bit: "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    JPEGLosslessSV1: "image/jpeg",
    JPEGLSLossless: "image/jls",
    JPEGLSNearLossless: "image/jls",
    JPEG2000Lossless: "image/jp2",
    JPEG2000: "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    RLELossless: "image/dicom-rle",
}


# --------------------------------------------------------------------------- errors


class DicomWebError(Exception):
    """Any failure talking to a DICOMweb store. ``url`` is the request (no credentials)."""

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class RemoteUnavailable(DicomWebError):
    """The store cannot be reached: refused, timed out, TLS failure, 502/503/504."""


class Cancelled(DicomWebError):
    """The caller's cancel token fired while the request was running."""


class ServerError(DicomWebError):
    """The store answered with an HTTP error status (``status``)."""

    def __init__(self, message: str, url: str = "", status: int = 0) -> None:
        super().__init__(message, url)
        self.status = status


class AuthenticationFailed(ServerError):
    """401/403: missing, wrong or insufficient credentials."""


class NotFound(ServerError):
    """404: no such study, series, instance or frame."""


class BadResponse(DicomWebError):
    """A 2xx answer that cannot be used as asked."""


class FrameCountMismatch(BadResponse):
    """A frames answer with another number of parts than frames requested."""


class UnexpectedContentType(BadResponse):
    """A media type or transfer syntax we did not ask for (or cannot decode)."""


class EmptyPart(BadResponse):
    """A multipart answer with an empty part where a frame was expected."""


class FrameDecodeError(BadResponse):
    """The frame bytes arrived but do not decode to the image the metadata describes."""


class FrameOutOfRange(DicomWebError, ValueError):
    """A frame number below 1 or above the instance's NumberOfFrames."""


# --------------------------------------------------------------------------- values


class CancelToken:
    """Set once to stop a pull: running requests stop reading at the next chunk, queued
    work is dropped. Any thread may cancel or poll."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def raise_if_cancelled(self, url: str = "") -> None:
        if self._event.is_set():
            raise Cancelled(f"cancelled: {url}" if url else "cancelled", url)


@dataclass(frozen=True)
class Frame:
    """One frame as received (or read from the cache).

    ``number`` is 1-based as in DICOMweb URLs. ``transfer_syntax`` is the syntax of
    ``data`` ("" for rendered images). ``rendered`` means ``data`` is an image/png of
    display values (the raw frame was not offered): do not apply the rescale to it.
    """

    number: int
    data: bytes
    media_type: str
    transfer_syntax: str
    rendered: bool = False
    from_cache: bool = False
    url: str = ""


@dataclass(frozen=True)
class PixelDescription:
    """What decoding a frame needs from the instance's Image Pixel module."""

    rows: int
    columns: int
    samples_per_pixel: int = 1
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    photometric_interpretation: str = "MONOCHROME2"
    planar_configuration: int = 0

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PixelDescription:
        bits_allocated = int(ds.get("BitsAllocated", 16) or 16)
        return cls(
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
            bits_allocated=bits_allocated,
            bits_stored=int(ds.get("BitsStored", bits_allocated) or bits_allocated),
            pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
            photometric_interpretation=str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2"),
            planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
        )

    def options(self) -> dict[str, Any]:
        """pydicom decoding options for one frame."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "planar_configuration": self.planar_configuration,
            "number_of_frames": 1,
        }


@dataclass
class ClientStats:
    """Counters of one client since it was created (a snapshot when read)."""

    requests: int = 0
    bytes_received: int = 0
    frames_from_network: int = 0
    frames_from_cache: int = 0
    rendered_frames: int = 0
    errors: int = 0
    offline_answers: int = 0  # JSON answers served from the cache because the store was down

    def minus(self, other: ClientStats) -> ClientStats:
        """Counters accumulated since ``other`` was taken."""
        return ClientStats(**{k: getattr(self, k) - getattr(other, k) for k in self.__dataclass_fields__})


# --------------------------------------------------------------------------- auth


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <token>``; the token never appears in ``repr``."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"


def auth_for(kind: str, username: str = "", secret: str = "") -> requests.auth.AuthBase | None:
    """A requests auth object for ``kind`` in ``station.core.remote.remotes.AUTH_KINDS``."""
    if kind == "none":
        return None
    if kind == "basic":
        return requests.auth.HTTPBasicAuth(username, secret)
    if kind == "bearer":
        return BearerAuth(secret)
    raise ValueError(f"unknown auth kind {kind!r}")


# --------------------------------------------------------------------------- helpers


def redact(url: str) -> str:
    """The URL with any user:password removed, for messages and logs."""
    parts = urlsplit(url)
    if not (parts.username or parts.password):
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host).geturl()


def _media_params(value: str) -> tuple[str, dict[str, str]]:
    """``'a/b; k="v"; k2=v2'`` -> ``('a/b', {'k': 'v', 'k2': 'v2'})``, lower-cased names."""
    pieces = [p.strip() for p in value.split(";")]
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        if "=" in piece:
            k, v = piece.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    return pieces[0].lower(), params


def frame_accept(transfer_syntax: str) -> str:
    """Accept value for raw frames in ``transfer_syntax`` ("*" for any)."""
    if transfer_syntax == ANY_TRANSFER_SYNTAX:
        return RAW_ACCEPT_ANY
    media = _SYNTAX_MEDIA_TYPE.get(transfer_syntax, "application/octet-stream")
    return f'multipart/related; type="{media}"; transfer-syntax={transfer_syntax}'


def _date_value(value: str | date | tuple[str | date | None, str | date | None] | None) -> str | None:
    """QIDO date matching: one date, or a (from, to) range with either end open."""
    if value is None:
        return None
    if isinstance(value, tuple):
        lo, hi = (_date_value(v) or "" for v in value)  # type: ignore[arg-type]
        return f"{lo}-{hi}"
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    return str(value)


def _bulk_not_fetched(tag: Any, vr: str, uri: str) -> None:
    """Metadata bulk data (pixel data, big private blobs) is not fetched with the
    metadata; frames come through ``retrieve_frames``."""
    return None


def datasets_from_json(payload: Any, keywords: Iterable[str] | None = None) -> list[Dataset]:
    """DICOM JSON (a list of objects) to pydicom Datasets, bulk data left empty.

    ``keywords``: convert only these top-level attributes (sequences whole). pydicom's
    conversion costs ~15 us per element, and a series' metadata has ~100 per instance
    of which a viewer needs ~25: for 300 classic slices 500 ms become ~100 ms."""
    if not isinstance(payload, list):
        raise BadResponse("DICOM JSON answer is not a list")
    if keywords is not None:
        wanted = _json_tags(frozenset(keywords))
        payload = [{k: v for k, v in item.items() if k.upper() in wanted} if isinstance(item, dict) else item
                   for item in payload]
    return [Dataset.from_json(item, bulk_data_uri_handler=_bulk_not_fetched) for item in payload]


@functools.lru_cache(maxsize=8)
def _json_tags(keywords: frozenset[str]) -> frozenset[str]:
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"unknown DICOM keyword {keyword!r}")
        tags.add(f"{tag:08X}")
    return frozenset(tags)


# --------------------------------------------------------------------------- decoding


def decode_frame(frame: Frame, pixel: PixelDescription) -> np.ndarray:
    """Pixel array of one frame: stored values (no rescale) shaped (rows, columns) or
    (rows, columns, samples); for a rendered frame, the display image as uint8. Any
    thread; pure CPU (run it off the GUI thread)."""
    if frame.rendered:
        return _decode_rendered(frame, pixel)
    ts = UID(frame.transfer_syntax or ExplicitVRLittleEndian)
    try:
        if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            fast = _decode_native_le(frame.data, pixel)
            if fast is not None:
                return fast
        if ts.is_encapsulated:
            src = encapsulate([frame.data])
        else:
            src = frame.data
        arr, _ = get_decoder(ts).as_array(src, index=0, **pixel.options())
        return arr
    except FrameDecodeError:
        raise
    except Exception as exc:  # decoder plugins raise anything from RuntimeError to ValueError
        raise FrameDecodeError(
            f"frame {frame.number} ({ts.name}, {len(frame.data)} bytes) does not decode as "
            f"{pixel.rows}x{pixel.columns}: {exc!r} ({frame.url})",
            frame.url,
        ) from exc


def _decode_native_le(data: bytes, pixel: PixelDescription) -> np.ndarray | None:
    """Zero-copy view for plain little-endian grayscale; None for anything unusual (left
    to pydicom: bit-packed, colour, odd bit depths)."""
    if pixel.samples_per_pixel != 1 or pixel.bits_allocated not in (8, 16, 32):
        return None
    kind = "i" if pixel.pixel_representation == 1 else "u"
    dtype = np.dtype(f"<{kind}{pixel.bits_allocated // 8}")
    count = pixel.rows * pixel.columns
    if len(data) < count * dtype.itemsize:
        raise FrameDecodeError(
            f"native frame of {len(data)} bytes, {count * dtype.itemsize} expected for "
            f"{pixel.rows}x{pixel.columns}x{pixel.bits_allocated} bits"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count).reshape(pixel.rows, pixel.columns)
    shift = pixel.bits_allocated - pixel.bits_stored
    if shift > 0:
        # Bits above BitsStored may hold anything (PS3.5 8.1.1); shifting back through
        # the signed/unsigned type also sign-extends signed data.
        arr = np.right_shift(np.left_shift(arr, shift), shift)
    return arr


def _decode_rendered(frame: Frame, pixel: PixelDescription) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(frame.data)) as image:
            if pixel.samples_per_pixel == 1 and image.mode not in ("L", "I;16", "I"):
                image = image.convert("L")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise FrameDecodeError(f"rendered frame {frame.number} is not a readable image: {exc} ({frame.url})",
                               frame.url) from exc


# --------------------------------------------------------------------------- client


class DicomWebClient:
    """A DICOMweb store at ``base_url`` (e.g. ``http://127.0.0.1:8042/dicom-web``).

    ``auth``: a requests auth object (see ``auth_for``); ``verify``: True, False or the
    path of a CA bundle; ``timeout``: seconds a read may stall; ``cache``: the shared
    frame cache (None: every frame asks the network); ``transfer_syntax``: "*" (any,
    decoded here) or one UID the frames must come in; ``rendered_fallback``: try
    rendered frames when raw frames are refused. Close it (or use ``with``) to release
    connections and the pool.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: requests.auth.AuthBase | None = None,
        verify: bool | str = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        cache: FrameCache | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        transfer_syntax: str = ANY_TRANSFER_SYNTAX,
        rendered_fallback: bool = True,
        max_frames_per_request: int = MAX_FRAMES_PER_REQUEST,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {redact(base_url)}")
        if parts.username or parts.password:
            raise ValueError("credentials belong in auth=, not in the URL")
        self.base_url = base_url.rstrip("/")
        self.cache = cache
        self.transfer_syntax = transfer_syntax
        self.frame_accept = frame_accept(transfer_syntax)
        self.rendered_fallback = rendered_fallback
        self.max_frames_per_request = max(1, max_frames_per_request)
        self._auth = auth
        self._verify = verify
        self._timeout = (min(connect_timeout, timeout), timeout)
        self._max_workers = max(1, max_workers)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: dict[threading.Thread, requests.Session] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._stats = ClientStats()
        #: True while the store is unreachable (the last JSON request failed to connect);
        #: a UI shows "offline". Set by any thread, read by any thread (a plain bool).
        self.offline = False
        # Instances whose raw frames the server refused: ask for rendered ones directly.
        self._rendered_only: dict[str, str] = {}

    @classmethod
    def from_settings(cls, remote: RemoteSettings, *, cache: FrameCache | None = None, **kwargs: Any) -> DicomWebClient:
        """A client for a configured remote (auth, CA bundle, timeout from the settings)."""
        if not remote.dicomweb:
            raise ValueError(f"remote {remote.name!r} has no dicomweb URL")
        return cls(
            remote.dicomweb,
            auth=auth_for(remote.auth, remote.username, remote.secret()),
            verify=remote.tls_verify,
            timeout=remote.timeout,
            cache=cache,
            **kwargs,
        )

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Shut the pool down (waits for running requests) and close every session."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            sessions = list(self._sessions.values())
            self._sessions.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for s in sessions:
            s.close()

    def __enter__(self) -> DicomWebClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> ClientStats:
        with self._lock:
            return ClientStats(**vars(self._stats))

    def _count(self, **increments: int) -> None:
        with self._lock:
            for k, v in increments.items():
                setattr(self._stats, k, getattr(self._stats, k) + v)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is not None and not self._closed:
            return session
        session = requests.Session()
        session.auth = self._auth
        session.verify = self._verify
        session.headers["User-Agent"] = _USER_AGENT
        # One quick retry of a GET whose pooled connection the server had closed; a
        # refused connection is retried once too (a restarting archive), never more, so
        # a dead store is reported within about two connect timeouts.
        retry = Retry(total=2, connect=1, read=1, status=0, redirect=2, other=0,
                      allowed_methods=frozenset({"GET"}), raise_on_status=False)
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=4, max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        with self._lock:
            if self._closed:
                session.close()
                raise DicomWebError(f"client for {self.base_url} is closed", self.base_url)
            # Sessions of threads that ended (a finished pull's workers) are closed here,
            # so a long GUI session does not accumulate idle connections.
            for thread in [t for t in self._sessions if not t.is_alive()]:
                self._sessions.pop(thread).close()
            self._sessions[threading.current_thread()] = session
        self._local.session = session
        return session

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise DicomWebError(f"client for {self.base_url} is closed", self.base_url)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="dicomweb")
            return self._pool

    # ----------------------------------------------------------------- HTTP

    def _get(
        self,
        url: str,
        accept: str,
        *,
        params: Mapping[str, str] | None = None,
        cancel: CancelToken | None = None,
    ) -> tuple[int, str, bytes]:
        """GET ``url``; return (status, content type, body) of a 2xx answer, raise a
        typed error otherwise. The body is read in chunks so a cancel stops it."""
        if cancel is not None:
            cancel.raise_if_cancelled(url)
        shown = redact(url)
        session = self._session()
        self._count(requests=1)
        try:
            # verify= on the request, not only on the session: requests lets REQUESTS_CA_BUNDLE
            # or CURL_CA_BUNDLE from the environment override a session's CA bundle
            # (psf/requests#3829), which would silently ignore the configured one.
            response = session.get(url, params=params, headers={"Accept": accept}, verify=self._verify,
                                   timeout=self._timeout, stream=True)
        except requests.exceptions.SSLError as exc:
            self._count(errors=1)
            LOGGER.warning("DICOMweb %s: TLS failure: %s", shown, exc)
            raise RemoteUnavailable(f"TLS failure talking to {shown}: {exc}", shown) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            self._count(errors=1)
            LOGGER.warning("DICOMweb %s: unreachable: %s", shown, exc)
            raise RemoteUnavailable(f"remote store unreachable: {shown} ({type(exc).__name__})", shown) from exc
        except requests.exceptions.RequestException as exc:
            self._count(errors=1)
            LOGGER.warning("DICOMweb %s: request failed: %s", shown, exc)
            raise DicomWebError(f"request to {shown} failed: {exc}", shown) from exc
        with response:
            shown = redact(response.url or url)
            chunks: list[bytes] = []
            # Read urllib3's stream directly: requests' iter_content goes through
            # urllib3's decoding buffer even for identity bodies, which costs about half
            # the time of a 150 MB answer on loopback. Decode only what is encoded.
            encoding = response.headers.get("Content-Encoding", "").strip().lower()
            decode = encoding not in ("", "identity")
            try:
                while True:
                    chunk = response.raw.read(_READ_CHUNK, decode_content=decode)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if cancel is not None and cancel.cancelled:
                        raise Cancelled(f"cancelled: {shown}", shown)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self._count(errors=1)
                LOGGER.warning("DICOMweb %s: connection lost while reading: %s", shown, exc)
                raise RemoteUnavailable(f"connection lost while reading {shown}", shown) from exc
            body = b"".join(chunks)
            self._count(bytes_received=len(body))
            status = response.status_code
            content_type = response.headers.get("Content-Type", "")
        if status >= 400:
            self._count(errors=1)
            raise self._http_error(shown, status, body)
        return status, content_type, body

    @staticmethod
    def _http_error(url: str, status: int, body: bytes) -> DicomWebError:
        detail = ""
        try:
            payload = json.loads(body.decode("utf-8", "replace"))
            if isinstance(payload, dict):  # Orthanc's error document
                detail = str(payload.get("Details") or payload.get("Message") or "")
        except ValueError:
            detail = body[:200].decode("utf-8", "replace").strip()
        message = f"HTTP {status} from {url}" + (f": {detail[:300]}" if detail else "")
        LOGGER.warning("DICOMweb %s", message)
        if status in (401, 403):
            return AuthenticationFailed(message, url, status)
        if status == 404:
            return NotFound(message, url, status)
        if status in (502, 503, 504):
            return RemoteUnavailable(message, url)
        if status == 400 and "/frames/" in url and "out of range" in detail.lower():
            return FrameOutOfRange(message, url)
        return ServerError(message, url, status)

    def _get_json(self, url: str, params: Mapping[str, str] | None = None) -> Any:
        """GET a DICOM JSON answer (QIDO-RS, WADO-RS metadata).

        With a frame cache, every answer is also kept there (same key rule: URL plus
        Accept), and when the store is unreachable the last answer to the same URL is
        returned instead, however old: searches and series metadata keep working offline
        for what was looked at before (``offline_answers`` counts these, ``offline``
        says the last JSON request was one). Without a cached answer the
        ``RemoteUnavailable`` propagates.
        """
        if params:
            # '*' (wildcards) and ',' (value lists) stay literal: RFC 3986 allows them in
            # a query, and Orthanc does not decode %2A, so an encoded wildcard matches nothing.
            url = f"{url}?{urlencode(params, safe='*,')}"
        try:
            status, _, body = self._get(url, DICOM_JSON_ACCEPT)
        except RemoteUnavailable:
            cached = self.cache.get(url, DICOM_JSON_ACCEPT, allow_stale=True) if self.cache is not None else None
            if cached is None:
                self.offline = True
                raise
            LOGGER.info("DICOMweb %s: store unreachable, answering from the cache", redact(url))
            self.offline = True
            self._count(offline_answers=1)
            body = cached.data
        else:
            self.offline = False
            if status == 204:
                body = b""
            if self.cache is not None:
                self.cache.put(url, DICOM_JSON_ACCEPT, DICOM_JSON_ACCEPT, body)
        if not body.strip():
            return []
        try:
            return json.loads(body)
        except ValueError as exc:
            raise BadResponse(f"answer of {redact(url)} is not JSON: {exc}", redact(url)) from exc

    # ----------------------------------------------------------------- URLs

    def study_url(self, study: str) -> str:
        return f"{self.base_url}/studies/{quote(study)}"

    def series_url(self, study: str, series: str) -> str:
        return f"{self.study_url(study)}/series/{quote(series)}"

    def instance_url(self, study: str, series: str, sop: str) -> str:
        return f"{self.series_url(study, series)}/instances/{quote(sop)}"

    def frame_url(self, study: str, series: str, sop: str, number: int) -> str:
        """The URL of one frame; also its cache key (with the Accept value)."""
        return f"{self.instance_url(study, series, sop)}/frames/{number}"

    def rendered_url(self, study: str, series: str, sop: str, number: int) -> str:
        return f"{self.frame_url(study, series, sop, number)}/rendered"

    # ----------------------------------------------------------------- QIDO-RS

    def search_studies(
        self,
        *,
        patient_id: str | None = None,
        patient_name: str | None = None,
        study_date: str | date | tuple[str | date | None, str | date | None] | None = None,
        modality: str | None = None,
        study_uid: str | None = None,
        accession_number: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fuzzy: bool = False,
        include_fields: Iterable[str] = (),
        extra: Mapping[str, str] | None = None,
    ) -> list[Dataset]:
        """QIDO-RS studies matching every given key (``*`` wildcards allowed in names
        and IDs; ``study_date`` one date or a (from, to) range). Caller's thread."""
        params = _qido_params(
            PatientID=patient_id, PatientName=patient_name, StudyDate=_date_value(study_date),
            ModalitiesInStudy=modality, StudyInstanceUID=study_uid, AccessionNumber=accession_number,
            limit=limit, offset=offset, fuzzy=fuzzy, include_fields=include_fields, extra=extra,
        )
        return datasets_from_json(self._get_json(f"{self.base_url}/studies", params))

    def search_series(
        self,
        study_uid: str | None = None,
        *,
        modality: str | None = None,
        series_uid: str | None = None,
        patient_id: str | None = None,
        patient_name: str | None = None,
        study_date: str | date | tuple[str | date | None, str | date | None] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        fuzzy: bool = False,
        include_fields: Iterable[str] = (),
        extra: Mapping[str, str] | None = None,
    ) -> list[Dataset]:
        """QIDO-RS series, within one study or across all. Caller's thread."""
        params = _qido_params(
            Modality=modality, SeriesInstanceUID=series_uid, PatientID=patient_id,
            PatientName=patient_name, StudyDate=_date_value(study_date), limit=limit, offset=offset,
            fuzzy=fuzzy, include_fields=include_fields, extra=extra,
        )
        url = f"{self.study_url(study_uid)}/series" if study_uid else f"{self.base_url}/series"
        return datasets_from_json(self._get_json(url, params))

    def search_instances(self, study_uid: str, series_uid: str, *, limit: int | None = None,
                         offset: int | None = None, include_fields: Iterable[str] = ()) -> list[Dataset]:
        """QIDO-RS instances of one series. Caller's thread."""
        params = _qido_params(limit=limit, offset=offset, include_fields=include_fields)
        return datasets_from_json(self._get_json(f"{self.series_url(study_uid, series_uid)}/instances", params))

    # ----------------------------------------------------------------- WADO-RS metadata

    def series_metadata(self, study: str, series: str, *, keywords: Iterable[str] | None = None) -> list[Dataset]:
        """Metadata of every instance of a series (bulk data not fetched); only the
        ``keywords`` attributes when given (see ``datasets_from_json``). Caller's thread."""
        return datasets_from_json(self._get_json(f"{self.series_url(study, series)}/metadata"), keywords)

    def instance_metadata(self, study: str, series: str, sop: str) -> Dataset:
        found = datasets_from_json(self._get_json(f"{self.instance_url(study, series, sop)}/metadata"))
        if len(found) != 1:
            url = redact(self.instance_url(study, series, sop))
            raise BadResponse(f"{len(found)} metadata objects for one instance: {url}", url)
        return found[0]

    def retrieve_instance(self, study: str, series: str, sop: str, *, cancel: CancelToken | None = None) -> bytes:
        """The stored instance as a Part 10 file (bytes), in its stored syntax."""
        url = self.instance_url(study, series, sop)
        _, content_type, body = self._get(url, INSTANCE_ACCEPT, cancel=cancel)
        parts = _parse_multipart(redact(url), content_type, body)
        if len(parts) != 1:
            raise FrameCountMismatch(f"{len(parts)} parts for one instance: {redact(url)}", redact(url))
        part_type, data = parts[0]
        if _media_params(part_type)[0] not in ("application/dicom", ""):
            raise UnexpectedContentType(f"{part_type!r} instead of application/dicom: {redact(url)}", redact(url))
        if not data:
            raise EmptyPart(f"empty instance: {redact(url)}", redact(url))
        return data

    def retrieve_series_frames(self, study: str, series: str, *, cancel: CancelToken | None = None) -> dict[str, Frame]:
        """Pixel data of every single-frame instance of a series from ONE series-level
        WADO-RS retrieve (Part 10 instances in their stored syntax), as frame 1 of each
        instance, keyed by SOP Instance UID, and cached exactly as frames requests would
        cache them.

        Why: a classic series has one instance per slice, so frames requests cannot
        batch; Orthanc answers a 300-instance series in one request about 7x faster than
        300 frame requests. The whole answer is held in memory while it is parsed, so
        callers keep this to series of bounded size (``RemoteSeries`` does). Multi-frame
        instances and syntaxes whose pixel bytes are not those of a frames answer (big
        endian, deflated) are left out: fetch them with ``retrieve_frames``.
        """
        if self.transfer_syntax != ANY_TRANSFER_SYNTAX:
            # Stored-syntax bytes must not be cached under a specific syntax's key.
            raise DicomWebError("series retrieval serves frames only for transfer_syntax='*'", self.base_url)
        url = self.series_url(study, series)
        shown = redact(url)
        _, content_type, body = self._get(url, INSTANCE_ACCEPT, cancel=cancel)
        parts = _parse_multipart(shown, content_type, body)
        del body
        frames: dict[str, Frame] = {}
        for part_type, data in parts:
            if cancel is not None:
                cancel.raise_if_cancelled(url)
            if _media_params(part_type)[0] not in ("application/dicom", ""):
                raise UnexpectedContentType(f"{part_type!r} instead of application/dicom: {shown}", shown)
            found = _single_frame_of(data, shown)
            if found is not None:
                sop, ts, media, pixels = found
                frames[sop] = Frame(1, pixels, media, ts, url=redact(self.frame_url(study, series, sop, 1)))
        self._count(frames_from_network=len(frames))
        if self.cache is not None:
            self.cache.put_many(
                (self.frame_url(study, series, sop, 1), self.frame_accept,
                 f"{f.media_type}; transfer-syntax={f.transfer_syntax}", f.data)
                for sop, f in frames.items()
            )
        return frames

    # ----------------------------------------------------------------- frames

    def retrieve_frames(
        self,
        study: str,
        series: str,
        sop: str,
        frames: Sequence[int],
        *,
        number_of_frames: int | None = None,
        cancel: CancelToken | None = None,
    ) -> list[Frame]:
        """Frames ``frames`` (1-based) of one instance, in the order asked.

        Cached frames cost nothing; the missing ones are grouped into contiguous runs,
        one request each (split at ``max_frames_per_request``); several runs go out in
        parallel on the client's pool. ``number_of_frames`` (from the metadata) lets
        out-of-range numbers fail before any request. Blocks the calling thread.
        """
        numbers = [int(n) for n in frames]
        for n in numbers:
            if n < 1 or (number_of_frames is not None and n > number_of_frames):
                url = redact(self.frame_url(study, series, sop, n))
                limit = f"1..{number_of_frames}" if number_of_frames is not None else ">= 1"
                raise FrameOutOfRange(f"frame {n} out of range {limit}: {url}", url)
        found: dict[int, Frame] = {}
        for n in dict.fromkeys(numbers):
            cached = self._cached_frame(study, series, sop, n)
            if cached is not None:
                found[n] = cached
        if found:
            self._count(frames_from_cache=len(found))
        missing = sorted(set(numbers) - set(found))
        runs = _runs(missing, self.max_frames_per_request)
        if len(runs) == 1:
            for f in self._fetch_run(study, series, sop, runs[0], cancel):
                found[f.number] = f
        elif runs:
            pool = self._executor()
            futures = [pool.submit(self._fetch_run, study, series, sop, run, cancel) for run in runs]
            wait(futures)
            errors = [fut.exception() for fut in futures if fut.exception() is not None]
            if errors:
                raise errors[0]  # type: ignore[misc]
            for fut in futures:
                for f in fut.result():
                    found[f.number] = f
        return [found[n] for n in numbers]

    def cached_frame(self, study: str, series: str, sop: str, number: int, *, allow_stale: bool = False) -> Frame | None:
        """The frame from the cache alone (raw, else rendered), or None; never a request.
        ``allow_stale`` also returns expired entries (offline work)."""
        frame = self._cached_frame(study, series, sop, number, allow_stale=allow_stale)
        if frame is not None:
            self._count(frames_from_cache=1)
        return frame

    def _cached_frame(self, study: str, series: str, sop: str, n: int, *, allow_stale: bool = False) -> Frame | None:
        if self.cache is None:
            return None
        url = self.frame_url(study, series, sop, n)
        hit = self.cache.get(url, self.frame_accept, allow_stale=allow_stale)
        if hit is not None:
            media, params = _media_params(hit.content_type)
            ts = params.get("transfer-syntax") or _FRAME_MEDIA_TYPES.get(media, ExplicitVRLittleEndian)
            return Frame(n, hit.data, media, ts, rendered=False, from_cache=True, url=redact(url))
        if not allow_stale and sop not in self._rendered_only:
            # Rendered copies exist only for instances whose raw frames were refused;
            # online, that is known here, so the common miss costs one lookup, not two.
            return None
        rurl = self.rendered_url(study, series, sop, n)
        hit = self.cache.get(rurl, RENDERED_ACCEPT, allow_stale=allow_stale)
        if hit is not None:
            return Frame(n, hit.data, _media_params(hit.content_type)[0], "", rendered=True,
                         from_cache=True, url=redact(rurl))
        return None

    def _fetch_run(self, study: str, series: str, sop: str, run: list[int], cancel: CancelToken | None) -> list[Frame]:
        """One request for a contiguous run; validates and caches the parts. Any thread."""
        if sop in self._rendered_only:
            return [self._fetch_rendered(study, series, sop, n, cancel) for n in run]
        base = self.instance_url(study, series, sop)
        url = f"{base}/frames/{','.join(map(str, run))}"
        shown = redact(url)
        try:
            _, content_type, body = self._get(url, self.frame_accept, cancel=cancel)
        except ServerError as exc:
            if not (self.rendered_fallback and exc.status in RAW_REFUSED_STATUSES):
                raise
            return self._fall_back_to_rendered(study, series, sop, run, cancel, exc)
        parts = _parse_multipart(shown, content_type, body)
        if len(parts) != len(run):
            raise FrameCountMismatch(f"{len(parts)} parts for {len(run)} frames requested: {shown}", shown)
        frames: list[Frame] = []
        for n, (part_type, data) in zip(run, parts):
            media, ts = self._check_part(shown, n, part_type)
            if not data:
                raise EmptyPart(f"frame {n} is an empty part: {shown}", shown)
            frames.append(Frame(n, data, media, ts, rendered=False, from_cache=False,
                                url=redact(self.frame_url(study, series, sop, n))))
        self._count(frames_from_network=len(frames))
        if self.cache is not None:
            self.cache.put_many(
                (self.frame_url(study, series, sop, f.number), self.frame_accept,
                 f"{f.media_type}; transfer-syntax={f.transfer_syntax}", f.data)
                for f in frames
            )
        return frames

    def _check_part(self, url: str, number: int, part_type: str) -> tuple[str, str]:
        """Media type and transfer syntax of one part, if it is one we asked for."""
        media, params = _media_params(part_type or "application/octet-stream")
        ts = params.get("transfer-syntax") or _FRAME_MEDIA_TYPES.get(media, "")
        if media not in _FRAME_MEDIA_TYPES or not ts:
            raise UnexpectedContentType(f"frame {number} came as {part_type!r}: {url}", url)
        if self.transfer_syntax != ANY_TRANSFER_SYNTAX and ts != self.transfer_syntax:
            raise UnexpectedContentType(
                f"frame {number} came in {ts}, {self.transfer_syntax} was asked for: {url}", url)
        if ts not in _NATIVE_SYNTAXES:
            try:
                decoder = get_decoder(ts)
            except NotImplementedError:
                decoder = None
            if decoder is None or not decoder.is_available:
                raise UnexpectedContentType(f"frame {number} came in {ts}, which cannot be decoded here: {url}", url)
        return media, ts

    def _fall_back_to_rendered(self, study: str, series: str, sop: str, run: list[int],
                               cancel: CancelToken | None, refused: ServerError) -> list[Frame]:
        try:
            first = self._fetch_rendered(study, series, sop, run[0], cancel)
        except Cancelled:
            raise
        except DicomWebError:
            raise refused from None  # rendered does not work either: the raw error is the news
        LOGGER.warning("DICOMweb %s: raw frames refused (HTTP %d); using rendered frames for this instance",
                       redact(self.instance_url(study, series, sop)), refused.status)
        with self._lock:
            self._rendered_only[sop] = str(refused)
        return [first, *(self._fetch_rendered(study, series, sop, n, cancel) for n in run[1:])]

    def _fetch_rendered(self, study: str, series: str, sop: str, n: int, cancel: CancelToken | None) -> Frame:
        url = self.rendered_url(study, series, sop, n)
        shown = redact(url)
        _, content_type, body = self._get(url, RENDERED_ACCEPT, cancel=cancel)
        media = _media_params(content_type)[0]
        if media != RENDERED_ACCEPT:
            raise UnexpectedContentType(f"rendered frame {n} came as {content_type!r}, image/png asked for: {shown}", shown)
        if not body:
            raise EmptyPart(f"rendered frame {n} is empty: {shown}", shown)
        self._count(frames_from_network=1, rendered_frames=1)
        if self.cache is not None:
            self.cache.put(url, RENDERED_ACCEPT, media, body)
        return Frame(n, body, media, "", rendered=True, from_cache=False, url=shown)

    def rendered_reason(self, sop: str) -> str | None:
        """Why an instance is served rendered (the raw request's error), or None."""
        with self._lock:
            return self._rendered_only.get(sop)


def _single_frame_of(data: bytes, url: str) -> tuple[str, str, str, bytes] | None:
    """(SOP Instance UID, transfer syntax, media type, frame bytes) of a single-frame
    Part 10 instance, as a frames answer would carry them; None for what a frames
    request must fetch instead (multi-frame, bit-packed, big endian, deflated).

    Only the header is parsed; the pixel value is sliced out of ``data`` where the
    header ends (the rules of ``station.core.imaging.volume``), so 300 instances cost 300
    header parses, not 300 full datasets."""
    fp = io.BytesIO(data)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        pixel_tell = fp.tell()
        layout = _pixel_layout(Path("part"), ds, data[pixel_tell:pixel_tell + 12], pixel_tell, len(data))
        sop = str(ds.SOPInstanceUID)
    except (VolumeError, InvalidDicomError, AttributeError, ValueError, KeyError, EOFError) as exc:
        raise BadResponse(f"an instance of {url} does not parse: {exc}", url) from exc
    ts = layout.transfer_syntax
    if layout.n_frames != 1 or ts == ExplicitVRBigEndian:
        return None
    start = layout.value_offset
    if layout.kind == "memmap" and layout.dtype is not None and layout.dtype.byteorder in "<=|":
        size = layout.rows * layout.columns * layout.dtype.itemsize
        return sop, ExplicitVRLittleEndian, "application/octet-stream", data[start:start + size]
    if layout.kind == "decoder" and ts.is_encapsulated and ts in _SYNTAX_MEDIA_TYPE:
        try:
            frame = next(generate_frames(data[start:], number_of_frames=1))
        except (StopIteration, ValueError) as exc:
            raise BadResponse(f"an instance of {url} has unreadable pixel data: {exc}", url) from exc
        return sop, str(ts), _SYNTAX_MEDIA_TYPE[ts], frame
    return None


def _runs(numbers: Sequence[int], max_len: int) -> list[list[int]]:
    """Sorted unique numbers -> runs of consecutive numbers, none longer than max_len."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1 and len(runs[-1]) < max_len:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def _parse_multipart(url: str, content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(content type, bytes) of each part of a multipart/related answer."""
    if _media_params(content_type)[0] != "multipart/related":
        raise UnexpectedContentType(f"{content_type!r} instead of multipart/related: {url}", url)
    try:
        decoder = MultipartDecoder(body, content_type)
    except (ImproperBodyPartContentException, NonMultipartContentTypeException, ValueError) as exc:
        raise BadResponse(f"malformed multipart answer ({exc}): {url}", url) from exc
    out = []
    for part in decoder.parts:
        raw = part.headers.get(b"Content-Type", b"")
        out.append((raw.decode("latin-1") if isinstance(raw, bytes) else str(raw), part.content))
    return out


def _qido_params(
    *,
    limit: int | None = None,
    offset: int | None = None,
    fuzzy: bool = False,
    include_fields: Iterable[str] = (),
    extra: Mapping[str, str] | None = None,
    **keys: str | None,
) -> dict[str, str]:
    params = {k: str(v) for k, v in keys.items() if v not in (None, "")}
    if limit is not None:
        params["limit"] = str(limit)
    if offset is not None:
        params["offset"] = str(offset)
    if fuzzy:
        params["fuzzymatching"] = "true"
    fields = list(include_fields)
    if fields:
        params["includefield"] = ",".join(fields)
    if extra:
        params.update({k: str(v) for k, v in extra.items()})
    return params


__all__ = [
    "ANY_TRANSFER_SYNTAX",
    "RAW_ACCEPT_ANY",
    "RENDERED_ACCEPT",
    "AuthenticationFailed",
    "BadResponse",
    "BearerAuth",
    "CancelToken",
    "Cancelled",
    "ClientStats",
    "DicomWebClient",
    "DicomWebError",
    "EmptyPart",
    "Frame",
    "FrameCountMismatch",
    "FrameDecodeError",
    "FrameOutOfRange",
    "NotFound",
    "PixelDescription",
    "RemoteUnavailable",
    "ServerError",
    "UnexpectedContentType",
    "auth_for",
    "datasets_from_json",
    "decode_frame",
    "frame_accept",
    "redact",
]
