"""The station's DICOM receiver: a pynetdicom storage SCP on background threads.

Accepts Verification, every storage SOP class pynetdicom knows, the DICOS classes (which
pynetdicom does not know; registered here) and, if configured, any other storage SOP
class a vendor invents. Every instance is durably stored and indexed by
``Store.ingest`` before the success status goes back; if that fails the sender gets a
failure status (0xA700 out of resources, 0xC000 cannot understand), never success.

Threads: pynetdicom runs two threads per association (its DUL thread reads the socket,
the association thread serves requests) and calls the handlers below on them. Handlers
only persist, index and publish an event on the ``EventBus``; they never wait on the GUI
or on their own association's traffic. Each association's DUL thread writes the incoming
dataset straight to a spool file in the store; once it is complete, the DUL thread runs
``_on_c_store`` itself (``cstore.DIRECT_C_STORE_ATTRIBUTE``: no thread hand-over per
instance), so ``Store.adopt`` flushes, renames, syncs and indexes in that order before
the response goes out. Should the association thread be busy with an earlier request,
the C-STORE is queued for it as pynetdicom does, and the DUL thread flushes the spool
file while it wakes up (see ``store_spool.SpoolFile``); ``Store.adopt`` waits for that flush.
"""

from __future__ import annotations

import errno
import logging
import ssl
import threading
from pathlib import Path
from typing import Any

from pydicom.filewriter import write_file_meta_info
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification

from station.core.config import ReceiverSettings
from station.core.events import (
    AssociationClosed,
    AssociationOpened,
    EventBus,
    InstanceStored,
    ReceiverError,
    ReceiverState,
)
from station.core.store.store import InvalidInstanceError, Store, StoreError, StoreFullError
from station.net.dimse.pynetdicom_ext import cstore, pdu, reactor, spooling
from station.core.store import spool as store_spool
from station.net.dimse.sopclasses import register_dicos_sop_classes

LOGGER = logging.getLogger(__name__)

# Connections from one address beyond this multiple of max_associations_per_peer are
# closed on connect, before any request is read.
FLOOD_FACTOR = 2

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


_UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
)


_LOSSLESS_COMPRESSED = frozenset({
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1 (DICOS CT)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Lossless
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K RPCL Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
})


def _preferred_transfer_syntaxes() -> list[str]:
    """Transfer syntaxes in the order the receiver prefers them when a context offers several.

    pynetdicom picks the first of *our* list that the sender proposed. A sender that
    proposes a compressed syntax next to uncompressed ones holds the object compressed
    (dcmtk storescu proposes the file's own syntax plus uncompressed): taking the
    compressed one stores the original bytes and spares the sender a decompression it
    may not be able to do. Lossless before lossy, so nothing is degraded by our choice.
    """
    compressed = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in _UNCOMPRESSED]
    lossless = [ts for ts in compressed if ts in _LOSSLESS_COMPRESSED]
    lossy = [ts for ts in compressed if ts not in _LOSSLESS_COMPRESSED]
    return lossless + list(_UNCOMPRESSED) + lossy


class ReceiverStartError(RuntimeError):
    """The receiver could not listen (port in use, bad address, no permission)."""


def peer_of(event: evt.Event) -> tuple[str, str]:
    """Return ("host:port", calling AE title) of the peer behind `event`."""
    requestor = event.assoc.requestor
    aet = requestor.ae_title or ""
    if not aet and requestor.primitive is not None:  # before negotiation completes
        aet = requestor.primitive.calling_ae_title or ""
    return f"{requestor.address}:{requestor.port}", str(aet).strip()


class ReceiverStatus:
    """What the status bar shows of a receiver, in-process or not. Read from any thread.

    Subclasses set ``settings`` and keep ``_port``, ``_open``, ``_received``, ``_errors``.
    """

    settings: ReceiverSettings
    _port: int
    _open: int
    _received: int
    _errors: int

    @property
    def aet(self) -> str:
        return self.settings.aet

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        """The port actually listened on (differs from the setting when it was 0)."""
        return self._port

    @property
    def open_associations(self) -> int:
        return self._open

    @property
    def instances_received(self) -> int:
        return self._received

    @property
    def errors(self) -> int:
        return self._errors


class Receiver(ReceiverStatus):
    """Listens for DICOM associations and stores what arrives.

    ``start()`` and ``stop()`` are called from the owner's thread (the GUI thread or the
    ``station serve`` main thread); the handlers run on pynetdicom's per-association threads.
    """

    def __init__(self, store: Store, bus: EventBus, settings: ReceiverSettings) -> None:
        self.store = store
        self.bus = bus
        self.settings = settings
        self._server: Any = None
        self._lock = threading.Lock()
        self._open = 0
        self._received = 0
        self._errors = 0
        self._port = settings.port
        self._per_peer: dict[str, int] = {}

    @property
    def is_running(self) -> bool:
        return self._server is not None

    # -- lifecycle ------------------------------------------------------------------------------

    def _make_ae(self) -> AE:
        register_dicos_sop_classes()
        # Vendor DICOS sub-classes and private classes are storage too; pynetdicom only
        # accepts unknown abstract syntaxes as storage with this switch.
        _config.UNRESTRICTED_STORAGE_SERVICE = self.settings.accept_unknown_sop_classes
        # pynetdicom's "standard" handlers format a log line for every PDU and DIMSE
        # message even when nothing is logged: about a millisecond per instance. The
        # receiver logs what matters itself (peer, AE title, status).
        _config.LOG_HANDLER_LEVEL = "none"
        # Datasets are written to the store's spool folder as they arrive (not held in
        # memory), and the store adopts the file with a rename once it is complete.
        _config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(ae_title=self.settings.aet)
        setattr(ae, spooling.SPOOL_DIR_ATTRIBUTE, self.store.spool_dir())
        # _on_c_store only persists, indexes and publishes: it may run on the DUL thread.
        setattr(ae, cstore.DIRECT_C_STORE_ATTRIBUTE, True)
        ae.maximum_pdu_size = self.settings.max_pdu
        setattr(ae, pdu.MAX_PDATA_BYTES_ATTRIBUTE,
                self.settings.max_pdu or pdu.DEFAULT_MAX_PDATA_BYTES)
        setattr(ae, pdu.STALL_TIMEOUT_ATTRIBUTE, self.settings.acse_timeout)
        ae.maximum_associations = self.settings.max_associations
        if self.settings.allowed_calling_aets:
            ae.require_calling_aet = list(self.settings.allowed_calling_aets)
        ae.network_timeout = self.settings.network_timeout
        ae.acse_timeout = self.settings.acse_timeout
        ae.dimse_timeout = self.settings.network_timeout
        syntaxes = _preferred_transfer_syntaxes()
        ae.add_supported_context(Verification, list(_UNCOMPRESSED))
        for context in StoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        for uid in register_dicos_sop_classes():
            ae.add_supported_context(uid, syntaxes)
        return ae

    def start(self) -> None:
        """Bind and start serving in background threads; raise ReceiverStartError if not possible."""
        if self._server is not None:
            return
        try:
            reactor.install()
        except reactor.UnsupportedPynetdicomError as exc:
            self.bus.publish(ReceiverState(False, self.aet, self.settings.host, self.settings.port, str(exc)))
            raise ReceiverStartError(str(exc)) from exc
        ae = self._make_ae()
        handlers = [
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_C_ECHO, self._on_c_echo),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        try:
            ssl_context = self._ssl_context()
            self._server = ae.start_server(
                (self.settings.host, self.settings.port), block=False, evt_handlers=handlers,
                ssl_context=ssl_context,
            )
        except (OSError, ssl.SSLError) as exc:
            message = f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
            self.bus.publish(ReceiverState(False, self.aet, self.settings.host, self.settings.port, message))
            raise ReceiverStartError(message) from exc
        self._port = self._server.server_address[1]
        LOGGER.info("receiver %s listening on %s:%d", self.aet, self.settings.host, self._port)
        self.bus.publish(ReceiverState(True, self.aet, self.settings.host, self._port))

    def _ssl_context(self) -> ssl.SSLContext | None:
        """A TLS server context when a certificate is configured (client certificates
        required and verified when a CA bundle is given); None for plain DICOM."""
        r = self.settings
        if not r.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certfile=r.tls_cert, keyfile=r.tls_key)
        if r.tls_ca:
            context.load_verify_locations(cafile=r.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    @property
    def tls(self) -> bool:
        return bool(self.settings.tls_cert)

    def stop(self) -> None:
        """Stop listening and end open associations. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        LOGGER.info("receiver %s on port %d stopped", self.aet, self._port)
        self.bus.publish(ReceiverState(False, self.aet, self.settings.host, self._port, "stopped"))

    # -- handlers (per-association threads) -------------------------------------------------------

    def _on_conn_open(self, event: evt.Event) -> None:
        with self._lock:
            self._open += 1
            count = self._open
            from_peer = self._per_peer.get(event.address[0], 0) + 1
            self._per_peer[event.address[0]] = from_peer
        peer = f"{event.address[0]}:{event.address[1]}"
        self.bus.publish(AssociationOpened(peer, "", count))
        if from_peer > FLOOD_FACTOR * self.settings.max_associations_per_peer:
            # A flood of connections from one address (far beyond what an association
            # request could be rejected for in time): close at once rather than let each
            # hold a thread until its ACSE timeout.
            LOGGER.warning("%s: %d connections open from this address; closing this one", peer, from_peer)
            self._error(peer, "", f"too many connections from {event.address[0]} ({from_peer}); closed", None)
            event.assoc.dul.socket.close()

    def _on_conn_close(self, event: evt.Event) -> None:
        with self._lock:
            self._open = max(0, self._open - 1)
            count = self._open
            left = self._per_peer.get(event.address[0], 0) - 1
            if left > 0:
                self._per_peer[event.address[0]] = left
            else:
                self._per_peer.pop(event.address[0], None)
        peer, aet = f"{event.address[0]}:{event.address[1]}", ""
        try:
            peer, aet = peer_of(event)
        except AttributeError:  # the connection closed before association negotiation
            pass
        how = "aborted" if event.assoc.is_aborted else "released" if event.assoc.is_released else "closed"
        self.bus.publish(AssociationClosed(peer, aet, count, how))

    def _on_requested(self, event: evt.Event) -> None:
        """An association request arrived: refuse a peer that already holds its share."""
        peer, aet = peer_of(event)
        with self._lock:
            held = self._per_peer.get(event.assoc.requestor.address, 0)
        if held > self.settings.max_associations_per_peer:
            message = (f"association rejected: {held - 1} already open from this peer, "
                       f"limit {self.settings.max_associations_per_peer}")
            LOGGER.warning("%s (%s): %s", aet, peer, message)
            self._error(peer, aet, message, None)
            # Rejected-transient, service provider (presentation), local limit exceeded;
            # then wait for the reply to go out, as pynetdicom's own rejections do.
            assoc = event.assoc
            assoc.acse.send_reject(0x02, 0x03, 0x02)
            assoc.kill()

    def _on_rejected(self, event: evt.Event) -> None:
        peer, aet = peer_of(event)
        why = ("calling AE title not allowed" if self.settings.allowed_calling_aets
               and aet not in self.settings.allowed_calling_aets else "association rejected")
        LOGGER.warning("%s (%s): %s", aet, peer, why)
        self._error(peer, aet, why, None)

    def _on_aborted(self, event: evt.Event) -> None:
        peer, aet = peer_of(event)
        LOGGER.warning("association from %s (%s) aborted", aet, peer)

    def _on_c_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _error(self, peer: str, aet: str, message: str, status: int | None) -> None:
        with self._lock:
            self._errors += 1
        self.bus.publish(ReceiverError(peer, aet, message, status))

    def _persist(self, event: evt.Event, aet: str, source: str) -> InstanceStored:
        """Hand what arrived to the store; return once it is durable and indexed."""
        request = event.request
        spooled = getattr(request, "_dataset_file", None)
        if isinstance(spooled, store_spool.SpoolFile):
            # Chunked receive: the dataset is already in the store's spool folder (and
            # possibly being flushed to disk by the DUL thread: the store waits for that).
            try:
                if spooled.error is not None:
                    Path(spooled.name).unlink(missing_ok=True)
                    raise StoreFullError(f"store is full: {spooled.error.strerror}") if spooled.error.errno in (
                        errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else StoreError(f"cannot spool: {spooled.error}")
                return self.store.adopt(spooled.name, source=source, sync=spooled.sync,
                                        head=spooled.head, size=spooled.size)
            finally:
                spooled.close()
        path = getattr(request, "_dataset_path", None)
        if path is not None:  # chunked receive into pynetdicom's own temp file
            return self.store.ingest([Path(path).read_bytes()], source=source)
        file_meta = event.file_meta
        if aet:
            # Records which scanner sent the object, as Part 10 intends.
            file_meta.SourceApplicationEntityTitle = spooling.safe_aet(aet)
        meta = DicomBytesIO()
        meta.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(meta, file_meta, enforce_standard=True)
        return self.store.ingest([meta.getvalue(), request.DataSet.getbuffer()], source=source)

    def _on_c_store(self, event: evt.Event) -> int:
        """Persist one instance; answer success only once it is durable and indexed."""
        peer, aet = peer_of(event)
        source = f"{aet}@{peer}"
        try:
            stored = self._persist(event, aet, source)
        except StoreFullError as exc:
            LOGGER.error("store full, refusing instance from %s (%s): %s", aet, peer, exc)
            self._error(peer, aet, str(exc), STATUS_OUT_OF_RESOURCES)
            return STATUS_OUT_OF_RESOURCES
        except InvalidInstanceError as exc:
            LOGGER.error("cannot understand instance from %s (%s): %s", aet, peer, exc)
            self._error(peer, aet, str(exc), STATUS_CANNOT_UNDERSTAND)
            return STATUS_CANNOT_UNDERSTAND
        except StoreError as exc:
            LOGGER.error("cannot store instance from %s (%s): %s", aet, peer, exc)
            self._error(peer, aet, str(exc), STATUS_OUT_OF_RESOURCES)
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # never answer success for something we did not keep
            LOGGER.exception("unexpected failure storing instance from %s (%s)", aet, peer)
            self._error(peer, aet, f"internal error: {exc}", STATUS_CANNOT_UNDERSTAND)
            return STATUS_CANNOT_UNDERSTAND
        with self._lock:
            self._received += 1
        self.bus.publish(stored)
        return STATUS_SUCCESS
