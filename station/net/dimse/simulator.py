"""The built-in simulated scanner of ``station demo``: sends a synthetic bag every few seconds.

It is a real DICOM peer: bags are written to files and sent over C-STORE to the
receiver, exactly as a CT scanner would.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from station.core.synth import bags as synth
from station.core.config import SimulatorSettings
from station.net.dimse.sender import SendError, send_files

LOGGER = logging.getLogger(__name__)


class SimulatedScanner:
    """A background thread that plays a CT scanner. ``start()``/``stop()`` from the owner thread."""

    def __init__(
        self,
        host: str,
        port: int,
        called_aet: str,
        settings: SimulatorSettings,
        workdir: str | Path | None = None,
        *,
        calling_aet: str = "SIM_CT",
        first_seed: int = 1,
    ) -> None:
        self.host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.port = port
        self.called_aet = called_aet
        self.calling_aet = calling_aet
        self.settings = settings
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="station-sim-"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seed = first_seed
        self.bags_sent = 0
        self.last_error = ""

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="simulated-scanner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the bag being sent (if any); remove the work folder if we made it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                LOGGER.warning("simulated scanner did not stop within %.0f s", timeout)
            self._thread = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def send_one(self) -> int:
        """Synthesise and send one bag now (on the calling thread); return files sent."""
        seed = self._seed
        self._seed += 1
        s = self.settings
        dicos = s.dicos_every > 0 and seed % s.dicos_every == 0
        threats = s.threats if seed % 2 else 0  # every other bag is clear
        out = self.workdir / f"bag-{seed:05d}"
        bag = synth.make_bag_volume(size=s.size, slices=s.slices, threats=threats, seed=seed)
        files = synth.write_ct_series(bag, out, dicos=dicos, seed=seed)
        try:
            result = send_files(self.host, self.port, files, calling_aet=self.calling_aet,
                                called_aet=self.called_aet)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if result.failed:
            self.last_error = result.failed[0][1]
        self.bags_sent += 1
        return len(result.sent)

    def _run(self) -> None:
        # Send the first bag at once so the demo shows something straight away.
        while not self._stop.is_set():
            try:
                sent = self.send_one()
                LOGGER.info("simulated scanner sent a bag (%d files)", sent)
            except SendError as exc:
                self.last_error = str(exc)
                LOGGER.warning("simulated scanner: %s", exc)
            except Exception:  # the demo scanner must keep going whatever one bag does
                LOGGER.exception("simulated scanner failed on one bag")
            self._stop.wait(self.settings.interval_s)


def simulate_main(host: str, port: int, called_aet: str, settings: SimulatorSettings) -> int:
    """``station simulate``: play a scanner until SIGTERM or Ctrl-C (main thread)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scanner = SimulatedScanner(host, port, called_aet, settings)
    scanner.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        scanner.stop()
    return 0


class SimulatorProcess:
    """The demo's scanner as a process of its own, so synthesising and sending bags never
    competes with the GUI for the interpreter. ``start``/``stop`` from the owner thread."""

    def __init__(self, host: str, port: int, called_aet: str, settings: SimulatorSettings) -> None:
        self.host, self.port, self.called_aet, self.settings = host, port, called_aet, settings
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from station.core.resources import station_command

        if self._proc is not None:
            return
        s = self.settings
        self._proc = subprocess.Popen(
            [*station_command("simulate"), "--host", "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host,
             "--port", str(self.port), "--aec", self.called_aet, "--interval", str(s.interval_s),
             "--slices", str(s.slices), "--size", str(s.size), "--threats", str(s.threats),
             "--dicos-every", str(s.dicos_every)],
            stdin=subprocess.DEVNULL)

    def stop(self, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
