"""Auto-routing: forward complete scans to remotes by DIMSE C-STORE or DICOMweb STOW-RS.

Rules (``[[routing]]`` in the station's TOML file; remotes come from ``[[remotes]]``,
``station.core.remote.remotes``)::

    [[routing]]
    match = { modality = "CT" }          # every key must match; a list means "any of"
    to = "pacs"                          # a remote's name, or a list of names
    # via = "dimse"                      # or "stowrs"; default: dimse when the remote has
    #                                    # aet/host/port, else stowrs
    # name = "CT to the PACS"            # shown in the routing panel (default "rule N")

    [[routing]]
    match = { alarm = "ALARM", modality = ["CT", "TDR"] }
    to = "supervisor"

Match keys: ``modality``; ``sop_class`` (a UID, a pydicom keyword such as
``DICOSCTImageStorage``, or a UID prefix ending in ``*``); ``alarm`` (ALARM, CLEAR, UNKNOWN,
or NONE for "no machine TDR"); ``decision`` (CLEAR, SUSPECT, THREAT, or NONE). Alarm and
decision are the state of the scan's study; they usually arrive after the images (the
detector's TDR, then the analyst), so a study is evaluated again whenever its state
changes and a scan that now matches is queued then. No ``match`` (or an empty one)
matches everything.

The queue itself is ``station.core.routing.outbox.Outbox`` (persistent, one job per scan and
remote, retried with backoff). Threads: ``route``/``study_changed``/``forward`` run on
the caller's thread (the scheduler's, or a hook's) and only write the outbox; each remote
has a sender thread that sends one job at a time (DIMSE: one association per scan, via
``station.net.dimse.sender.send_files``; STOW-RS: streamed multipart/related requests), so a
remote that is down or slow never holds back the others. The scheduler calls ``kick``
to wake senders whose retry is due. No Qt.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from pydicom.uid import UID_dictionary
from requests_toolbelt.streaming_iterator import StreamingIterator

from station.core.config import ConfigError, RouteSettings, settings_from_data
from station.core.hooks.runner import AlertRaised, DecisionRecorded, ScanCompleted
from station.core.routing.outbox import Job, Outbox, OutboxSettings, retry_delay
from station.core.remote.remotes import RemoteSettings
from station.core.dicom.sopclasses import DICOS_SOP_CLASSES
from station.net.dicomweb.client import auth_for, redact
from station.net.dimse.sender import SendError, send_files

LOGGER = logging.getLogger(__name__)

__all__ = [
    "MATCH_KEYS",
    "RouteError",
    "Router",
    "RoutingRule",
    "VIAS",
    "default_via",
    "parse_routing",
    "stow_rs",
]

VIAS: tuple[str, ...] = ("dimse", "stowrs")
"""How a job is sent: DIMSE C-STORE (one association per scan) or DICOMweb STOW-RS."""

MATCH_KEYS: tuple[str, ...] = ("modality", "sop_class", "alarm", "decision")
_ALLOWED = {
    "alarm": ("ALARM", "CLEAR", "UNKNOWN", "NONE"),
    "decision": ("CLEAR", "SUSPECT", "THREAT", "NONE"),
}
_CHUNK = 1 << 20

_KEYWORD_TO_UID: dict[str, str] = {v[4]: k for k, v in UID_dictionary.items() if v[4]}
_KEYWORD_TO_UID.update({keyword: uid for uid, keyword in DICOS_SOP_CLASSES.items()})


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class RoutingRule:
    """One ``[[routing]]`` entry: forward scans that ``matches`` to each remote in ``to``."""

    name: str
    match: Mapping[str, tuple[str, ...]]
    to: tuple[str, ...]
    via: str = ""  # "" = the remote's default (see default_via)

    def matches(self, scan: ScanCompleted) -> bool:
        for key, wanted in self.match.items():
            if key == "modality":
                ok = scan.modality.upper() in wanted
            elif key == "sop_class":
                ok = any(_uid_matches(uid, pattern) for uid in scan.sop_class_uids for pattern in wanted)
            elif key == "alarm":
                ok = (scan.alarm or "NONE") in wanted
            else:
                ok = (scan.decision or "NONE") in wanted
            if not ok:
                return False
        return True


def _uid_matches(uid: str, pattern: str) -> bool:
    return uid.startswith(pattern[:-1]) if pattern.endswith("*") else uid == pattern


def default_via(remote: RemoteSettings) -> str:
    """DIMSE when the remote has a DICOM peer (aet/host/port), else STOW-RS."""
    return "dimse" if remote.has_dimse else "stowrs"


def _check_via(remote: RemoteSettings, via: str, where: str) -> None:
    if via == "dimse" and not remote.has_dimse:
        raise ConfigError(f"{where}: remote {remote.name!r} has no aet/host/port for via = \"dimse\"")
    if via == "stowrs" and not remote.has_dicomweb:
        raise ConfigError(f"{where}: remote {remote.name!r} has no dicomweb URL for via = \"stowrs\"")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not value or not all(value):
        raise ConfigError(f"{where} must be a string or a non-empty list of strings")
    return tuple(value)


def parse_routing(entries: Sequence[RouteSettings | Mapping[str, Any]], remotes: Sequence[RemoteSettings],
                  origin: str | os.PathLike[str] = "<routing>") -> list[RoutingRule]:
    """Rules from the ``[[routing]]`` entries (``settings.routing``, or tables as ``tomllib``
    returns them), checked against ``remotes``; ConfigError names the rule and key."""
    by_name = {r.name: r for r in remotes}
    rules = []
    for i, entry in enumerate(settings_from_data({"routing": list(entries)}, origin).routing, 1):
        where = f"{origin}: [[routing]] #{i}"
        if not entry.to:
            raise ConfigError(f"{where}: to (a remote's name) is required")
        to = _strings(entry.to, f"{where}: to")
        if entry.via and entry.via not in VIAS:
            raise ConfigError(f"{where}: via must be one of {', '.join(VIAS)}")
        for name in to:
            if name not in by_name:
                known = ", ".join(by_name) or "none configured"
                raise ConfigError(f"{where}: no remote named {name!r} in [[remotes]] ({known})")
            _check_via(by_name[name], entry.via or default_via(by_name[name]), where)
        match: dict[str, tuple[str, ...]] = {}
        for key in MATCH_KEYS:
            value = getattr(entry.match, key)
            if value is None:
                continue
            values = _strings(value, f"{where}: match.{key}")
            if key == "sop_class":
                resolved = []
                for v in values:
                    if v.endswith("*") or all(c.isdigit() or c == "." for c in v):
                        resolved.append(v)
                    elif v in _KEYWORD_TO_UID:
                        resolved.append(_KEYWORD_TO_UID[v])
                    else:
                        raise ConfigError(f"{where}: match.sop_class {v!r} is neither a UID nor a known keyword")
                values = tuple(resolved)
            else:
                values = tuple(v.upper() for v in values)
                if key in _ALLOWED and not set(values) <= set(_ALLOWED[key]):
                    raise ConfigError(f"{where}: match.{key} must be among {', '.join(_ALLOWED[key])}")
            match[key] = values
        rules.append(RoutingRule(entry.name or f"rule {i}", match, to, entry.via))
    return rules


# --------------------------------------------------------------------------- sending


class RouteError(Exception):
    """A send failed; ``unreachable`` when the remote as a whole is (connection refused,
    association rejected, HTTP 5xx/401/403), so every job for it waits."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def _dimse_send(remote: RemoteSettings, paths: Sequence[str]) -> None:
    peer = f"{remote.aet}@{remote.host}:{remote.port}"
    try:
        result = send_files(remote.host, remote.port, paths, calling_aet=remote.calling_aet,
                            called_aet=remote.aet, timeout=remote.timeout)
    except SendError as exc:
        raise RouteError(str(exc), unreachable=True) from exc
    except (OSError, RuntimeError, ValueError) as exc:
        raise RouteError(f"C-STORE to {peer}: {exc}", unreachable=True) from exc
    if result.failed:
        path, why = result.failed[0]
        raise RouteError(f"{len(result.failed)} of {len(paths)} instance(s) not stored by {peer}; "
                         f"{Path(path).name}: {why}")


def _session_for(remote: RemoteSettings) -> requests.Session:
    session = requests.Session()
    try:
        session.auth = auth_for(remote.auth, remote.username, remote.secret())
    except ConfigError as exc:
        session.close()
        raise RouteError(str(exc), unreachable=True) from exc
    session.verify = remote.tls_verify
    return session


def _batches(paths: Sequence[str], batch_bytes: int) -> Iterator[list[tuple[str, int]]]:
    batch: list[tuple[str, int]] = []
    size = 0
    for p in paths:
        try:
            n = os.stat(p).st_size
        except OSError as exc:
            raise RouteError(f"{p}: {exc.strerror or exc}") from exc
        if batch and size + n > batch_bytes:
            yield batch
            batch, size = [], 0
        batch.append((p, n))
        size += n
    if batch:
        yield batch


def stow_rs(remote: RemoteSettings, paths: Sequence[str], *, session: requests.Session | None = None,
            batch_bytes: int = 64 << 20) -> int:
    """Store ``paths`` (Part 10 files) on ``remote``'s DICOMweb service: POST
    ``{dicomweb}/studies`` as multipart/related; type="application/dicom", streamed from
    disk (never the whole scan in memory), at most ``batch_bytes`` per request. Returns
    the number of instances sent; RouteError says why not. Sender thread."""
    own = session is None
    session = session or _session_for(remote)
    url = remote.dicomweb.rstrip("/") + "/studies"
    sent = 0
    try:
        for batch in _batches(paths, batch_bytes):
            _stow_batch(session, url, batch, remote.timeout)
            sent += len(batch)
    finally:
        if own:
            session.close()
    return sent


def _stow_batch(session: requests.Session, url: str, batch: list[tuple[str, int]], timeout: float) -> None:
    boundary = uuid.uuid4().hex
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"--{boundary}--\r\n".encode()
    size = sum(len(head) + n + 2 for _, n in batch) + len(tail)

    def body() -> Iterator[bytes]:
        for path, n in batch:
            yield head
            left = n
            with open(path, "rb") as fp:
                while left > 0:
                    chunk = fp.read(min(_CHUNK, left))
                    if not chunk:
                        raise OSError(f"{path} shrank while being sent")
                    left -= len(chunk)
                    yield chunk
            yield b"\r\n"
        yield tail

    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    where = redact(url)
    try:
        # verify= per request: REQUESTS_CA_BUNDLE in the environment would otherwise
        # override the session's configured CA bundle (psf/requests#3829).
        response = session.post(url, data=StreamingIterator(size, body()), headers=headers,
                                timeout=(min(10.0, timeout), timeout), verify=session.verify)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise RouteError(f"STOW-RS {where}: {type(exc).__name__}: {exc}", unreachable=True) from exc
    except (requests.RequestException, OSError) as exc:
        raise RouteError(f"STOW-RS {where}: {exc}") from exc
    status = response.status_code
    text = response.text[:300].strip()
    failed = _failed_count(response)
    if status == 200 and not failed:
        return
    if status in (401, 403) or status >= 500:
        raise RouteError(f"STOW-RS {where}: HTTP {status} {text}", unreachable=True)
    if status in (200, 202) or failed:
        raise RouteError(f"STOW-RS {where}: {failed or 'some'} of {len(batch)} instance(s) refused (HTTP {status})")
    raise RouteError(f"STOW-RS {where}: HTTP {status} {text}")


def _failed_count(response: requests.Response) -> int:
    """Items of FailedSOPSequence (0008,1198) in a STOW-RS JSON answer."""
    try:
        payload = response.json()
    except ValueError:
        return 0
    if isinstance(payload, list):
        payload = payload[0] if payload else {}
    failed = payload.get("00081198", {}) if isinstance(payload, dict) else {}
    return len(failed.get("Value", []) or []) if isinstance(failed, dict) else 0


# --------------------------------------------------------------------------- the router


class _Sender:
    """The sender thread of one remote: claims due jobs and sends them one at a time."""

    def __init__(self, router: Router, remote: RemoteSettings) -> None:
        self.router = router
        self.remote = remote
        self.wake = threading.Event()
        self.stopping = False
        self.session: requests.Session | None = None
        self.thread = threading.Thread(target=self._run, name=f"route-{remote.name}", daemon=True)

    def _run(self) -> None:
        try:
            while not self.stopping:
                try:
                    job = self.router.outbox.claim_due(self.remote.name)
                except Exception:  # a locked or broken database: try again later
                    LOGGER.exception("outbox: cannot claim a job for %s", self.remote.name)
                    job = None
                if job is not None:
                    try:
                        self.router._send(self, job)
                    except Exception:  # the outbox failed under us: the job is sent again at the next start
                        LOGGER.exception("routing job %d to %s: cannot record the outcome", job.id, self.remote.name)
                        self.wake.wait(5.0)
                    continue
                # The scheduler's kick wakes us when a retry is due; the timeout is a backstop.
                self.wake.wait(5.0)
                self.wake.clear()
        finally:
            if self.session is not None:
                self.session.close()


class Router:
    """Matches completed scans against the rules, queues jobs in the outbox, and runs one
    sender thread per remote. ``start``/``stop`` from the owner's thread; ``route``,
    ``study_changed``, ``forward`` and ``kick`` from any thread except a receiver's."""

    def __init__(self, rules: Sequence[RoutingRule], remotes: Sequence[RemoteSettings], outbox: Outbox,
                 settings: OutboxSettings | None = None) -> None:
        self.rules = list(rules)
        self.remotes = {r.name: r for r in remotes}
        self.outbox = outbox
        self.settings = settings or OutboxSettings()
        self._senders: dict[str, _Sender] = {}
        self._lock = threading.Lock()
        self._started = False

    @property
    def remote_names(self) -> tuple[str, ...]:
        return tuple(self.remotes)

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            for remote in self.remotes.values():
                sender = self._senders[remote.name] = _Sender(self, remote)
                sender.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Claim nothing more; let a send in progress end (up to ``timeout``); join. A job
        cut short stays "sending" and is sent again whole at the next start."""
        with self._lock:
            senders = list(self._senders.values())
            self._senders.clear()
            self._started = False
        for s in senders:
            s.stopping = True
            s.wake.set()
        deadline = time.monotonic() + timeout
        for s in senders:
            s.thread.join(max(0.0, deadline - time.monotonic()))
            if s.thread.is_alive():
                LOGGER.error("routing to %s: a send is still running after %.0f s; leaving it", s.remote.name, timeout)

    # -- queueing ---------------------------------------------------------------------------

    def route(self, scan: ScanCompleted) -> int:
        """Queue ``scan`` for every rule that matches and every route of its study; returns
        the number of jobs created or extended. Scheduler thread (or a test)."""
        queued = 0
        for rule in self.rules:
            if rule.matches(scan):
                for name in rule.to:
                    queued += self._enqueue(scan, name, rule.via, rule.name)
        for route in self.outbox.study_routes(scan.study_uid):
            queued += self._enqueue(scan, route.remote, route.via, route.reason)
        return queued

    def study_changed(self, study_uid: str) -> int:
        """The study's alarm state or decision changed: evaluate its completed scans again."""
        return sum(self.route(scan) for scan in self.outbox.scans_of_study(study_uid))

    def forward(self, what: Any, to: str, *, via: str | None = None, reason: str = "") -> int:
        """``api.forward`` for hooks: a ``ScanCompleted`` is queued for ``to``; an
        ``AlertRaised``/``DecisionRecorded``/study UID adds a study route (its scans, now
        and later). ValueError for an unknown remote or an impossible ``via``."""
        remote = self.remotes.get(to)
        if remote is None:
            raise ValueError(f"no remote named {to!r} ({', '.join(self.remotes) or 'none configured'})")
        via = via or default_via(remote)
        if via not in VIAS:
            raise ValueError(f"via must be one of {', '.join(VIAS)}")
        try:
            _check_via(remote, via, "forward")
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        if isinstance(what, ScanCompleted):
            return self._enqueue(what, to, via, reason)
        if isinstance(what, (AlertRaised, DecisionRecorded)):
            study_uid = what.study_uid
        elif isinstance(what, str) and what:
            study_uid = what
        else:
            raise TypeError(f"cannot forward {what!r}: give a ScanCompleted, an AlertRaised, a DecisionRecorded or a study UID")
        self.outbox.add_study_route(study_uid, to, via, reason)
        return sum(self._enqueue(scan, to, via, reason) for scan in self.outbox.scans_of_study(study_uid))

    def _enqueue(self, scan: ScanCompleted, remote_name: str, via: str, reason: str) -> int:
        remote = self.remotes.get(remote_name)
        if remote is None:
            LOGGER.error("routing: no remote named %r any more; %s not queued", remote_name, scan.key)
            return 0
        job = self.outbox.enqueue(scan, remote_name, via or default_via(remote), reason)
        if job is None:
            return 0
        LOGGER.info("routing: %s %s (%d instances) queued for %s by %s", scan.modality, scan.key,
                    job.instances, remote_name, reason or "?")
        sender = self._senders.get(remote_name)
        if sender is not None:
            sender.wake.set()
        return 1

    def kick(self) -> None:
        """Wake the senders whose next job is due (the scheduler calls this often)."""
        now = time.time()
        for name, sender in list(self._senders.items()):
            due = self.outbox.next_due(name)
            if due is not None and due <= now:
                sender.wake.set()

    # -- sender threads ---------------------------------------------------------------------

    def _send(self, sender: _Sender, job: Job) -> None:
        remote = sender.remote
        started = time.monotonic()
        try:
            if job.via == "dimse":
                _dimse_send(remote, job.paths)
            else:
                if sender.session is None:
                    sender.session = _session_for(remote)
                stow_rs(remote, job.paths, session=sender.session,
                        batch_bytes=int(self.settings.stowrs_batch_mb * (1 << 20)))
        except Exception as exc:
            error = exc if isinstance(exc, RouteError) else RouteError(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, RouteError):
                LOGGER.exception("routing job %d to %s failed unexpectedly", job.id, remote.name)
            attempts = job.attempts + 1
            delay = retry_delay(attempts, self.settings.retry_min_s, self.settings.retry_max_s)
            retry_at = time.time() + delay
            self.outbox.mark_failed(job.id, str(error), retry_at)
            if error.unreachable:
                self.outbox.defer_remote(remote.name, str(error), retry_at)
            LOGGER.warning("routing %s (%d instances) to %s [%s] failed, attempt %d, next in %.0f s: %s",
                           job.scan_key, job.instances, remote.name, _peer(remote, job.via), attempts, delay, error)
            return
        self.outbox.mark_sent(job.id)
        if job.attempts or job.state == "failing":
            self.outbox.retry_now(remote.name)  # it answers again: no need to wait out the others' backoff
        LOGGER.info("routing: %s (%d instances) sent to %s by %s in %.2f s", job.scan_key, job.instances,
                    remote.name, job.via, time.monotonic() - started)


def _peer(remote: RemoteSettings, via: str) -> str:
    return f"{remote.aet}@{remote.host}:{remote.port}" if via == "dimse" else redact(remote.dicomweb)
