"""Remote stores in the GUI, against a real Orthanc: search from the cache browser, open a
remote series in the viewer while its frames arrive, cancel on switching, offline."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from station.testing.orthanc import OrthancServer
from station.core.config import ConfigError, Settings, load_settings
from station.core.remote.remotes import RemoteSettings
from station.ui.browser.browser import CacheBrowser
from station.ui.main_window import MainWindow
from station.ui.browser.remote import RemoteStores
from tests.orthanc_fixtures import SLICES


@pytest.fixture
def remotes(qtbot, orthanc, tmp_path):
    stores = RemoteStores([RemoteSettings(name="archive", dicomweb=orthanc.dicomweb_url)],
                          cache_dir=tmp_path / "frames")
    yield stores
    stores.shutdown()


@pytest.fixture
def window(qtbot, store, bridge, tmp_path, remotes):
    settings = Settings()
    settings.store.path = tmp_path / "store"
    w = MainWindow(store, bridge, settings, remotes=remotes)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def _type(qtbot, browser: CacheBrowser, text: str) -> None:
    with qtbot.waitSignal(browser.remotes.searchFinished, timeout=20000):
        browser.set_filter(text)


def _remote_rows(browser: CacheBrowser) -> list:
    return [e for e in browser.model.entries() if e.remote]


def test_browser_finds_remote_scans_beside_local_ones(qtbot, store, scans, remotes, ct_files):
    store.import_file(ct_files(1)[0])  # one local scan
    browser = CacheBrowser(store, remotes=remotes, thumbnails=False)
    qtbot.addWidget(browser)
    assert browser.remote_box.isVisible() or not browser.isVisible()
    assert browser.model.rowCount() == 1 and not _remote_rows(browser)  # the switch starts off
    with qtbot.waitSignal(remotes.searchFinished, timeout=20000):
        browser.remote_box.setChecked(True)
    # (Other tests may have put more into the session's Orthanc: "at least ours".)
    wanted = {s.series_uid for s in scans.values()}
    qtbot.waitUntil(lambda: wanted <= {e.series_uid for e in _remote_rows(browser)}, timeout=20000)
    rows = {e.series_uid: e for e in _remote_rows(browser)}
    dicos = rows[scans["dicos"].series_uid]
    assert dicos.source == "remote: archive" and dicos.study_uid == scans["dicos"].study_uid
    assert dicos.date == "2024-03-05" and dicos.modality == "CT"
    assert browser.model.rowCount() == 1 + len(rows)
    assert "remote" in browser.count_label.text()
    # Typing narrows both: the search goes to the archive after a pause.
    _type(qtbot, browser, "BAG-J2K")
    qtbot.waitUntil(lambda: [e.series_uid for e in _remote_rows(browser)] == [scans["j2k"].series_uid],
                    timeout=20000)
    # Terms only the local store can answer send nothing away and show no remote rows.
    browser.set_filter("alarm:yes")
    assert not browser.search_remotes() and not _remote_rows(browser)
    # Pin, delete and export do not apply to a remote row; open does.
    browser.set_filter("BAG-J2K")
    assert browser.search_remotes()
    qtbot.waitUntil(lambda: len(_remote_rows(browser)) == 1, timeout=20000)
    browser.table.selectRow(0)
    assert browser.actions_by_name["open"].isEnabled() and not browser.actions_by_name["pin"].isEnabled()
    with qtbot.waitSignal(browser.remoteOpenRequested, timeout=5000) as opened:
        browser.open_selected()
    assert opened.args[:3] == ["archive", scans["j2k"].study_uid, scans["j2k"].series_uid]
    browser.remote_box.setChecked(False)
    assert not _remote_rows(browser) and browser.model.rowCount() == 0  # the local scan is no J2K
    browser.shutdown()


def test_a_dead_archive_is_a_status_line_not_a_crash(qtbot, store, tmp_path):
    dead = RemoteStores([RemoteSettings(name="gone", dicomweb="http://127.0.0.1:9/dicom-web", timeout=2)],
                        cache_dir=tmp_path / "frames")
    browser = CacheBrowser(store, remotes=dead, thumbnails=False)
    qtbot.addWidget(browser)
    with qtbot.waitSignal(dead.searchFinished, timeout=20000):
        browser.remote_box.setChecked(True)
    assert "gone" in browser.status.text() and "unreachable" in browser.status.text()
    assert not _remote_rows(browser)
    browser.shutdown()
    dead.shutdown()


@pytest.mark.parametrize("name", ["dicos", "classic"])
def test_remote_series_opens_at_once_and_fills_as_frames_arrive(qtbot, window, scans, name):
    scan = scans[name]
    remotes = window.remotes
    window.open_remote("archive", scan.study_uid, scan.series_uid, scan.patient_id)
    assert window.remote_open == "archive" and not window.follow_box.isChecked()
    # The viewer opens with every slice known (scrollable), before all pixels are here.
    qtbot.waitUntil(lambda: window.viewer.slice_count == SLICES, timeout=20000)
    volume = window.viewer.volume
    assert volume.series_uid == scan.series_uid and window.viewer.current_index == SLICES // 2
    qtbot.waitUntil(lambda: volume.complete, timeout=30000)
    np.testing.assert_array_equal(volume.array(), scan.voxels.astype(np.float32))
    # The slice on screen is the real one, and the corner says the pull is done.
    qtbot.waitUntil(lambda: "all 10 slices" in window.viewer.overlay_text("tr"), timeout=10000)
    np.testing.assert_array_equal(window.viewer.displayed_values(), scan.voxels[SLICES // 2].astype(np.float32))
    assert window.viewer.first_slice_latency_s is not None
    # Scrolling is local once pulled, and the crosshair planes show the remote pixels.
    window.viewer.set_index(0)
    np.testing.assert_array_equal(window.viewer.displayed_values(), scan.voxels[0].astype(np.float32))
    qtbot.waitUntil(lambda: window.viewer.panes["coronal"].has_image(), timeout=10000)
    assert window.triage.decide("CLEAR") is False  # view-only: nothing written for a remote scan
    assert remotes.pull is not None and remotes.pull.progress.complete


def test_moving_to_another_scan_cancels_the_pull(qtbot, window, scans, ct_files, store):
    local = store.import_file(ct_files(1)[0])
    window.scan_list.scan_model.refresh()
    scan = scans["classic"]
    started = threading.Event()
    gate = threading.Event()
    pulls = []

    # Hold the first frames request so the switch surely happens mid-pull.
    original = window.remotes._on_frame

    def slow_on_frame(ticket, volume, event):
        started.set()
        gate.wait(10)
        original(ticket, volume, event)

    window.remotes._on_frame = slow_on_frame
    window.open_remote("archive", scan.study_uid, scan.series_uid)
    qtbot.waitUntil(lambda: window.remotes.pull is not None, timeout=20000)
    pulls.append(window.remotes.pull)
    assert started.wait(20)
    assert window.select_series(local.series_uid)
    gate.set()
    pull = pulls[0]
    assert pull.cancelled and window.remotes.pull is None and window.remote_open is None
    assert pull.wait(20) and not pull.progress.complete
    assert window.viewer.series_uid == local.series_uid
    qtbot.waitUntil(lambda: all(not t.is_alive() for t in pull._threads), timeout=20000)


def test_offline_the_pulled_scan_opens_from_the_cache(qtbot, store, bridge, scans, tmp_path):
    scan = scans["rle"]
    server = OrthancServer(tmp_path / "orthanc-gui").start()
    settings = Settings()
    settings.store.path = tmp_path / "store"
    try:
        server.upload(list(scan.files))
        remote = RemoteSettings(name="archive", dicomweb=server.dicomweb_url, timeout=3)
        online = RemoteStores([remote], cache_dir=tmp_path / "frames")
        window = MainWindow(store, bridge, settings, remotes=online)
        qtbot.addWidget(window)
        window.open_remote("archive", scan.study_uid, scan.series_uid)
        qtbot.waitUntil(lambda: window.viewer.volume is not None and window.viewer.volume.complete, timeout=30000)
        window.close()
    finally:
        server.stop()
    offline = RemoteStores([remote], cache_dir=tmp_path / "frames")
    window = MainWindow(store, bridge, settings, remotes=offline)
    qtbot.addWidget(window)
    window.open_remote("archive", scan.study_uid, scan.series_uid)
    qtbot.waitUntil(lambda: window.viewer.volume is not None and window.viewer.volume.complete, timeout=30000)
    np.testing.assert_array_equal(window.viewer.volume.array(), scan.voxels.astype(np.float32))
    qtbot.waitUntil(lambda: "offline" in window.viewer.overlay_text("tr"), timeout=10000)
    assert offline.offline("archive") and offline.pull is None  # nothing asked of the dead store
    window.close()


def test_an_archive_without_dicomweb_is_searched_by_c_find_and_retrieved_by_c_get(
        qtbot, store, bridge, orthanc, scans, tmp_path):
    """DIMSE only (aet/host/port): C-FIND finds the scans, opening one C-GETs it into the
    local store and shows it as a local scan."""
    scan = scans["classic"]
    pacs = RemoteStores([RemoteSettings(name="pacs", aet=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port,
                                        calling_aet="STATIONQR", timeout=15)], cache_dir=tmp_path / "frames")
    settings = Settings()
    settings.store.path = tmp_path / "store"
    window = MainWindow(store, bridge, settings, remotes=pacs)
    qtbot.addWidget(window)
    browser = window.browser_dock.widget()
    assert pacs.names == ["pacs"] and browser.remote_box.text() == "Search archive"
    with qtbot.waitSignal(pacs.searchFinished, timeout=30000):
        browser.remote_box.setChecked(True)
    rows = {e.series_uid: e for e in _remote_rows(browser)}
    assert {s.series_uid for s in scans.values()} <= set(rows)
    assert rows[scan.series_uid].patient_id == "BAG-CLASSIC" and rows[scan.series_uid].date == "2024-03-01"
    _type(qtbot, browser, "BAG-DICOS")
    assert [e.series_uid for e in _remote_rows(browser)] == [scans["dicos"].series_uid]
    with qtbot.waitSignal(pacs.seriesRetrieved, timeout=60000) as done:
        window.open_remote("pacs", scan.study_uid, scan.series_uid, "BAG-CLASSIC")
    assert done.args[1:] == [scan.series_uid, SLICES, []]
    assert len(store.instances(scan.series_uid)) == SLICES
    qtbot.waitUntil(lambda: window.viewer.series_uid == scan.series_uid and window.viewer.slice_count == SLICES,
                    timeout=20000)
    assert window.remote_open is None  # a local scan now: triage applies
    window.close()
    pacs.shutdown()


def test_remotes_come_from_the_settings_file_and_a_bad_one_only_costs_a_message(
        qtbot, store, bridge, orthanc, scans, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = tmp_path / "station.toml"
    config.write_text(f'[[remotes]]\nname = "archive"\ndicomweb = "{orthanc.dicomweb_url}"\n'
                      '[[remotes]]\nname = "dead"\ndicomweb = "http://127.0.0.1:9/dicom-web"\ntimeout = 2\n')
    settings = load_settings(config)
    settings.store.path = tmp_path / "store"
    window = MainWindow(store, bridge, settings)
    qtbot.addWidget(window)
    assert window.remotes.names == ["archive", "dead"]
    assert str(window.remotes.cache_dir).startswith(str(tmp_path / "cache"))
    # A series that is not there: the viewer says why, the station goes on.
    with qtbot.waitSignal(window.remotes.openFailed, timeout=20000):
        window.open_remote("archive", scans["dicos"].study_uid, "1.2.3.4.5.6.7", "nothing")
    assert window.remote_open is None and "Cannot open the scan from archive" in window.viewer.placeholder_text
    with qtbot.waitSignal(window.remotes.openFailed, timeout=20000):
        window.open_remote("dead", scans["dicos"].study_uid, scans["dicos"].series_uid)
    assert "unreachable" in window.viewer.placeholder_text
    window.close()

    # A remote the file cannot describe stops the start (the one read of the file refuses
    # it, naming the entry); one whose secret is missing at run time costs a message.
    config.write_text('[[remotes]]\nname = "broken"\nauth = "bearer"\ndicomweb = "http://x/dicom-web"\n')
    with pytest.raises(ConfigError, match=r"\[\[remotes\]\] #1: remote 'broken': .*token"):
        load_settings(config)
    monkeypatch.delenv("station_test_token", raising=False)
    config.write_text('[[remotes]]\nname = "broken"\nauth = "bearer"\ndicomweb = "http://x/dicom-web"\n'
                      'token_env = "station_test_token"\n')
    settings = load_settings(config)
    settings.store.path = tmp_path / "store"
    window = MainWindow(store, bridge, settings)
    qtbot.addWidget(window)
    browser = window.browser_dock.widget()
    assert window.remotes.names == [] and "token" in browser.status.text()
    window.close()
