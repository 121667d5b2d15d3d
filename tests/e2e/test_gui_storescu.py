"""The GUI as an analyst sees it, fed by the real dcmtk storescu: scans appear while arriving."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from station.core.synth import bags as synth
from station.core.config import ReceiverSettings, Settings
from station.core.events import EventBus
from station.net.dimse.receiver import Receiver

pytest.importorskip("pytestqt")


@pytest.fixture
def station(qtbot, store, tmp_path):
    from station.app.gui import make_app
    from station.ui.bridge import EventBridge
    from station.ui.main_window import MainWindow

    make_app()
    bus = EventBus()
    bridge = EventBridge(bus)
    settings = Settings()
    settings.store.path = store.root
    receiver = Receiver(store, bus, ReceiverSettings(aet="STATION", host="127.0.0.1", port=0))
    window = MainWindow(store, bridge, settings, receiver)
    qtbot.addWidget(window)
    receiver.start()
    window.resize(1400, 900)
    window.show()
    yield window, receiver
    receiver.stop()
    window.viewer.shutdown()
    window.close()
    bridge.close()


def storescu(env, port: int, files: list[Path]) -> None:
    out = subprocess.run(["storescu", "-R", "-aet", "CT_SCANNER", "-aec", "STATION", "127.0.0.1", str(port),
                          *map(str, files)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr


def test_classic_ct_appears_while_arriving_in_geometric_order(station, qtbot, tmp_path, dcmtk_env):
    window, receiver = station
    bag = synth.make_bag_volume(size=64, slices=24, threats=1, seed=11)
    files = sorted(f for f in synth.write_ct_series(bag, tmp_path / "bag") if f.suffix == ".dcm")
    # The scanner sends the second half of the bag first, then the first half: the
    # viewer must show what has arrived, then insert the rest in geometric order.
    storescu(dcmtk_env, receiver.port, files[12:])
    qtbot.waitUntil(lambda: window.viewer.volume is not None and window.viewer.volume.n_slices == 12, timeout=30000)
    assert len(window.listed_rows()) == 1
    assert window.listed_rows()[0].instances == 12
    storescu(dcmtk_env, receiver.port, files[:12])
    qtbot.waitUntil(lambda: window.viewer.volume.n_slices == 24, timeout=30000)
    qtbot.waitUntil(lambda: window.listed_rows()[0].instances == 24, timeout=10000)
    volume = window.viewer.volume
    z = [s.position_mm[2] for s in volume.slices]
    assert z == sorted(z)
    np.testing.assert_array_equal(volume.array(), bag.voxels.astype(np.float32))
    assert receiver.instances_received == 24
    qtbot.waitUntil(lambda: window.received_label.text() == "Received: 24", timeout=10000)
    assert "STATION" in window.receiver_label.text()
    assert str(receiver.port) in window.receiver_label.text()
    assert window.associations_label.text() == "Associations: 0"
    assert window.errors_label.text() == "Errors: 0"


def test_dicos_multiframe_ct_shows_every_frame(station, qtbot, tmp_path, dcmtk_env):
    window, receiver = station
    bag = synth.make_bag_volume(size=64, slices=20, threats=1, seed=12)
    files = [f for f in synth.write_ct_series(bag, tmp_path / "bag", dicos=True) if f.suffix == ".dcm"]
    assert len(files) == 1
    storescu(dcmtk_env, receiver.port, files)
    qtbot.waitUntil(lambda: window.viewer.volume is not None and window.viewer.volume.n_slices == 20, timeout=30000)
    (row,) = window.listed_rows()
    assert row.sop_class_uid == "1.2.840.10008.5.1.4.1.1.501.1"
    np.testing.assert_array_equal(window.viewer.volume.array(), bag.voxels.astype(np.float32))


def test_a_scanner_tdr_sent_by_storescu_becomes_an_alert_on_its_scan(station, qtbot, tmp_path, dcmtk_env):
    from station.core.dicos import Algorithm, Pto, read_tdr, scan_ref_from_volume, write_machine_tdr
    from station.core.dicom.sopclasses import DICOS_TDR
    from station.core.imaging.volume import load_volume

    window, receiver = station
    bag = synth.make_bag_volume(size=64, slices=24, threats=1, seed=13)
    (ct,) = [f for f in synth.write_ct_series(bag, tmp_path / "bag", dicos=True) if f.suffix == ".dcm"]
    (threat,) = bag.threats
    tdr_file = tmp_path / "atr.dcm"
    write_machine_tdr([Pto(id=1, base=tuple(map(float, threat.base_xyz)), extent=tuple(map(float, threat.extent_xyz)),
                           flag="THREAT", category="EXPLOSIVE", probability=0.81)],
                      tdr_file, scan=scan_ref_from_volume(load_volume([ct])),
                      algorithm=Algorithm("Acme ATR", "7.1"), processing_ms=40.0)
    storescu(dcmtk_env, receiver.port, [ct])
    storescu(dcmtk_env, receiver.port, [tdr_file])  # the scanner's ATR result follows the scan

    panel = window.alert_panel
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1, timeout=30000)
    alert = panel.model.alert_at(0)
    ct_series = [r for r in window.listed_rows() if r.modality == "CT"][0].series_uid
    assert alert.series_uid == ct_series
    assert alert.source == "Acme ATR 7.1" and alert.severity == "THREAT"
    assert window.alarm_label.isVisible() and "1 unresolved" in window.alarm_label.text()

    window.viewer.set_index(0)
    panel.select_alert(alert.key)  # as a click on the row would
    cx, cy, cz = (int(v) for v in alert.center)
    qtbot.waitUntil(lambda: window.viewer.series_uid == ct_series and window.viewer.current_index == cz,
                    timeout=30000)
    assert window.viewer.crosshair[:2] == (cx, cy)
    assert [t.flag for t in window.viewer.threats] == ["THREAT"]

    window.record_decision("THREAT", "OP-1")
    assert window.alarm_label.isHidden()
    assert window.viewer.threats[0].source == "operator"
    operator = [read_tdr(r.path) for r in window.store.instances_of_class(DICOS_TDR)]
    (op,) = [t for t in operator if t.tdr_type == "OPERATOR"]
    (machine,) = [t for t in operator if t.tdr_type == "MACHINE"]
    assert op.referenced_tdrs[0].sop_instance_uid == machine.sop_instance_uid
    assert op.operator_id == "OP-1" and op.operator_decision == "THREAT"
