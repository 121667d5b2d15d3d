"""Render the main window with synthetic scans to a PNG (README screenshots).

``python -m station.bench.screenshot OUT.png [--mode airport|clinic]`` builds a throw-away
store with a few synthetic bags (written by ``station.core.synth.bags`` and imported with
``Store.import_paths``), opens the main window offscreen at 1600x1000, selects a scan,
scrolls to a middle slice (through a planted threat when there is one) and saves the
window. Nothing outside a temp folder is touched.

``--viewer LAYOUT`` (single, mpr, quad) shows the slice viewer the way an analyst works
in it: airport mode opens a bag with planted threats outlined as a machine (ATR) and an
operator box, the crosshair on the first threat, material colours; clinic mode opens a
synthetic torso phantom in HU (``station.core.synth.phantom``) with the soft-tissue window.

``--remote`` starts a private Orthanc (Debian packages orthanc, orthanc-dicomweb) with a
few more bags, configures it as the remote "archive", shows the cache browser searching
it, and opens one of its bags in the viewer (pulled frame by frame over DICOMweb).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from station.app.gui import wait_until

LOGGER = logging.getLogger(__name__)

# (seed, threats, dicos): a mix like a belt produces: clear and alarming, classic and DICOS.
_BAGS = [(9, 0, False), (10, 0, False), (11, 0, False), (12, 1, True), (13, 0, False), (14, 2, False),
         (15, 0, True)]
_SHOW = 14  # the bag the screenshot opens
_VIEWED = (9, 10, 11)  # bags already looked at earlier in the shift


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m station.bench.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG file to write")
    parser.add_argument("--mode", choices=("airport", "clinic"), default="airport")
    parser.add_argument("--size", type=int, default=384, help="axial matrix of the synthetic bags")
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--viewer", choices=("single", "mpr", "quad"),
                        help="the viewer in this layout, with threats (airport) or a phantom (clinic)")
    parser.add_argument("--list-width", type=int, default=None, help="width of the scan list (pixels)")
    parser.add_argument("--remote", action="store_true", help="search and open a bag of a remote Orthanc")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    # Qt and the synthesiser are imported late: --help must work without a display.
    from station.core.synth import bags as synth
    from station.core.config import Settings
    from station.core.events import EventBus
    from station.core.store.store import Store
    from station.app.gui import make_app
    from station.ui.bridge import EventBridge
    from station.ui.main_window import MainWindow
    from station.ui.scan_list import RECEIVING_S

    app = make_app()
    with tempfile.TemporaryDirectory(prefix="station-shot-") as tmp:
        root = Path(tmp)
        settings = Settings()
        settings.store.path = root / "store"
        settings.ui.mode = args.mode
        store = Store(settings.store.path, durable=False)
        target_uid, target_slice = None, args.slices // 2
        target_truth: list = []
        viewed: list[str] = []
        if args.viewer and args.mode == "clinic":
            target_uid = _import_phantoms(store, root, args)
            bags: list = []
        else:
            bags = _BAGS
        for seed, threats, dicos in bags:
            bag = synth.make_bag_volume(size=args.size, slices=args.slices, threats=threats, seed=seed)
            patient = f"MRN-{40210 + seed}" if args.mode == "clinic" else None
            files = synth.write_ct_series(bag, root / f"bag{seed}", dicos=dicos, seed=seed, patient_id=patient)
            imported = store.import_paths(files)
            stored = imported.stored
            for message in imported.errors:
                LOGGER.warning("import: %s", message)
            if seed in _VIEWED and stored:
                viewed.append(stored[0].series_uid)
            if seed == _SHOW and stored:
                target_uid = stored[0].series_uid
                target_truth = bag.threats
                if bag.threats:
                    target_slice = int(round(bag.threats[0].center_xyz[2]))
            time.sleep(0.02)  # distinct arrival times, as from a belt
        # Past the "receiving" spell, so the list shows new and viewed scans as on a shift.
        time.sleep(RECEIVING_S)
        bus = EventBus()
        bridge = EventBridge(bus)
        archive = _start_archive(root, args) if args.remote else None
        remotes = None
        if archive is not None:
            from station.core.remote.remotes import RemoteSettings
            from station.ui.browser.remote import RemoteStores

            remotes = RemoteStores([RemoteSettings(name="archive", dicomweb=archive[0].dicomweb_url)],
                                   cache_dir=root / "frames")
        window = MainWindow(store, bridge, settings, remotes=remotes)
        for uid in viewed:
            window.select_series(uid)
        window.resize(args.width, args.height)
        window.show()
        wait_until(app, lambda: window.received_label is not None, 0.2)
        if target_uid is None:
            print("no scan was imported", file=sys.stderr)
            return 1
        if args.list_width:
            splitter = window.centralWidget()
            splitter.setSizes([args.list_width, args.width - args.list_width])
        window.select_series(target_uid)
        viewer = window.viewer
        wait_until(app, lambda: viewer.volume is not None and not viewer.is_busy() and viewer.current_index >= 0, 30)
        viewer.set_index(target_slice)
        if args.viewer:
            _stage_viewer(app, viewer, args, target_truth)
        if archive is not None:
            _stage_remote(app, window, archive[1])
        viewer.setFocus()
        wait_until(app, lambda: False, 0.3)  # let the bridge flush and the window settle
        image = window.grab()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if not image.save(str(args.out)):
            print(f"cannot write {args.out}", file=sys.stderr)
            return 1
        window.close()
        bridge.close()
        store.close()
        if archive is not None:
            archive[0].stop()
    print(args.out)
    return 0


def _start_archive(root: Path, args):
    """A private Orthanc holding three more bags; returns (server, study, series) of the
    one to open."""
    import pydicom

    from station.testing.orthanc import OrthancServer
    from station.core.synth import bags as synth

    server = OrthancServer(root / "orthanc").start()
    show = ("", "")
    for seed, threats, dicos in ((31, 1, True), (32, 0, False), (33, 1, False)):
        bag = synth.make_bag_volume(size=args.size, slices=args.slices, threats=threats, seed=seed)
        files = synth.write_ct_series(bag, root / f"archive{seed}", dicos=dicos, seed=seed,
                                      patient_id=f"ARCH-{seed:04d}")
        server.upload(files)
        if seed == 33:
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            show = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
    return server, show


def _stage_remote(app, window, show: tuple[str, str]) -> None:
    """The browser searching the archive, one of its bags open in the viewer."""
    window.browser_dock.show()
    browser = window.browser_dock.widget()
    browser.remote_box.setChecked(True)
    wait_until(app, lambda: any(e.remote for e in browser.model.entries()), 20)
    window.open_remote("archive", show[0], show[1], "ARCH-0033")
    viewer = window.viewer
    wait_until(app, lambda: viewer.volume is not None and getattr(viewer.volume, "complete", False), 60)
    rows = browser.model.entries()
    for i, e in enumerate(rows):
        if e.series_uid == show[1]:
            browser.table.selectRow(i)
    viewer.set_index(viewer.slice_count // 2)
    wait_until(app, lambda: not viewer.is_computing(), 30)
    wait_until(app, lambda: False, 0.5)


def _import_phantoms(store, root: Path, args) -> str | None:
    """Clinic mode: a few synthetic torso studies in the store; returns the one to show."""
    from station.core.synth.phantom import write_torso

    show = None
    for n, seed in enumerate((3, 4, 5)):
        files = write_torso(root / f"torso{seed}", size=args.size, slices=args.slices, seed=seed,
                            patient_id=f"MRN-{40210 + seed}", patient_name=f"Phantom^{'ABC'[n]}")
        imported = store.import_paths(files)
        stored = imported.stored
        for message in imported.errors:
            LOGGER.warning("import: %s", message)
        if stored and seed == 4:
            show = stored[0].series_uid
        time.sleep(0.02)
    return show


def _stage_viewer(app, viewer, args, threats) -> None:
    """Put the viewer in the state of an analyst at work (see the module docstring)."""
    viewer.set_layout(args.viewer)
    if args.mode == "airport" and threats:
        boxes = [{"base": t.base_xyz, "extent": t.extent_xyz, "label": f"{t.category.title()} 0.93",
                  "source": "machine", "flag": "HIGH_THREAT"} for t in threats[:1]]
        for t in threats[1:]:
            boxes.append({"base": t.base_xyz, "extent": t.extent_xyz, "label": "Suspect", "source": "operator",
                          "flag": "THREAT"})
        viewer.set_threats(boxes)
        viewer.next_threat()
        viewer.set_projection(35.0)
    elif args.mode == "clinic":
        x, y, z = viewer.crosshair
        shape = viewer.volume.shape
        # Through the spine and the lower chest: every plane shows something familiar.
        viewer.set_crosshair(shape[2] // 2 - shape[2] // 12, int(shape[1] * 0.62), int(shape[0] * 0.62))
        viewer.set_projection(20.0)
    wait_until(app, lambda: not viewer.is_computing(), 30)
    wait_until(app, lambda: False, 0.3)


if __name__ == "__main__":
    raise SystemExit(main())
