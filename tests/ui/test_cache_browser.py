"""The cache browser: filtering as you type, sorting, pin/delete, export, import, open."""

from __future__ import annotations

import zipfile

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from station.core.store.store import SeriesRow
from station.ui.browser.browser import (
    COL_ID,
    COL_SIZE,
    CacheBrowser,
    parse_query,
)


def _rows(browser: CacheBrowser) -> list[str]:
    return [e.patient_id for e in browser.model.entries()]


@pytest.fixture
def browser(qtbot, store, ct_files):
    """A browser over three real scans (BAG-A 2 slices, BAG-B 4, BAG-C 3)."""
    for pid, n in (("BAG-A", 2), ("BAG-B", 4), ("BAG-C", 3)):
        store.import_paths(ct_files(n, patient_id=pid, description=f"scan {pid}"))
    # Receiving ended long ago: deletion is allowed (the store refuses scans still arriving).
    store._writer.execute("UPDATE series SET first_received=first_received-100, last_received=last_received-100")
    b = CacheBrowser(store, None, thumbnails=False)
    qtbot.addWidget(b)
    b.show()
    yield b
    b.shutdown()


def test_query_syntax():
    q = parse_query("bag-1 mod:ct,dx alarm:yes 2026-11-01..2026-11-22 pin:yes dec:none src:imp")
    assert q.words == ("bag-1",)
    assert q.modalities == frozenset({"CT", "DX"})
    assert (q.alarm, q.date_from, q.date_to, q.pinned, q.decision, q.source) == (
        "yes", "2026-11-01", "2026-11-22", True, "", "imp")
    assert parse_query("20261101").date_from == "2026-11-01"
    assert parse_query("..2026-11-02").date_from is None


def test_filters_as_you_type(qtbot, browser):
    assert len(_rows(browser)) == 3
    qtbot.keyClicks(browser.search, "bag-b")
    assert _rows(browser) == ["BAG-B"]
    browser.search.clear()
    browser.set_filter("mod:DX")
    assert _rows(browser) == []
    browser.set_filter("mod:CT alarm:no")
    assert len(_rows(browser)) == 3
    browser.set_filter("alarm:yes")
    assert _rows(browser) == []
    browser.set_filter("")
    today = browser.model.entries()[0].date
    assert today
    browser.set_filter(f"{today}..")
    assert len(_rows(browser)) == 3
    browser.set_filter("..2000-01-01")
    assert _rows(browser) == []
    assert browser.count_label.text() == "0 of 3"


def test_sorting_by_columns(browser):
    browser.table.sortByColumn(COL_ID, Qt.SortOrder.DescendingOrder)
    assert _rows(browser) == ["BAG-C", "BAG-B", "BAG-A"]
    browser.table.sortByColumn(COL_SIZE, Qt.SortOrder.AscendingOrder)
    assert _rows(browser) == ["BAG-A", "BAG-C", "BAG-B"]


def test_pin_and_delete_with_confirmation(qtbot, browser, store, monkeypatch):
    browser.table.sortByColumn(COL_ID, Qt.SortOrder.AscendingOrder)
    uid_a = browser.model.entries()[0].series_uid
    browser.select(uid_a)
    browser.table.setFocus()
    browser.actions_by_name["pin"].trigger()
    assert store.scan_states()[uid_a][0] is True
    assert browser.model.data(browser.model.index(0, COL_ID)).startswith("★")
    browser.set_filter("pin:yes")
    assert _rows(browser) == ["BAG-A"]
    browser.set_filter("")

    asked = []

    def cancel(*args, **kw):
        asked.append(args[2])
        return QMessageBox.StandardButton.Cancel

    monkeypatch.setattr(QMessageBox, "question", cancel)
    browser.select(uid_a)
    browser.delete_selected()
    assert "BAG-A" in asked[0] and store.series(uid_a) is not None

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    paths = [i.path for i in store.instances(uid_a)]
    browser.select(uid_a)
    browser.delete_selected()
    assert store.series(uid_a) is None and not any(p.exists() for p in paths)
    assert "BAG-A" not in _rows(browser)


def test_delete_refuses_scan_in_use(qtbot, store, ct_files, monkeypatch):
    store.import_paths(ct_files(2, patient_id="BAG-V"))
    store._writer.execute("UPDATE series SET last_received=last_received-100")
    uid = store.series_list()[0].series_uid
    b = CacheBrowser(store, None, thumbnails=False, in_use=lambda: [uid])
    qtbot.addWidget(b)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    b.select(uid)
    b.delete_selected()
    assert store.series(uid) is not None
    assert "in use" in b.status.text()
    b.shutdown()


def test_export_to_folder_and_zip(qtbot, browser, tmp_path):
    browser.table.selectAll()
    with qtbot.waitSignal(browser.exportFinished, timeout=10000) as sig:
        assert browser.export_selected(tmp_path / "out")
    written, errors = sig.args
    assert not errors and len(written) == 3
    assert len(list((tmp_path / "out").glob("*/*.dcm"))) == 9
    with qtbot.waitSignal(browser.exportFinished, timeout=10000) as sig:
        browser.export_selected(tmp_path / "scans.zip")
    with zipfile.ZipFile(tmp_path / "scans.zip") as zf:
        assert len(zf.namelist()) == 9


def test_import_folder_names_the_bad_file(qtbot, browser, ct_files, tmp_path):
    folder = tmp_path / "incoming"
    ct_files(3, patient_id="BAG-NEW")
    files = ct_files(2, patient_id="BAG-NEW2")
    folder.mkdir()
    for f in files:
        f.rename(folder / f.name)
    (folder / "broken.dcm").write_bytes(b"not a dicom file at all")
    with qtbot.waitSignal(browser.importFinished, timeout=10000) as sig:
        assert browser.import_folder(folder)
    count, errors = sig.args
    assert count == 2
    assert len(errors) == 1 and "broken.dcm" in errors[0]
    assert "broken.dcm" in browser.status.text()
    assert "BAG-NEW2" in _rows(browser)


def test_open_signal_from_keyboard(qtbot, browser, store):
    browser.table.sortByColumn(COL_ID, Qt.SortOrder.AscendingOrder)
    browser.table.setFocus()
    browser.select(browser.model.entries()[1].series_uid)
    with qtbot.waitSignal(browser.openRequested, timeout=2000) as sig:
        qtbot.keyClick(browser.table, Qt.Key.Key_Return)
    assert sig.args == [browser.model.entries()[1].series_uid]
    assert store.scan_states()[sig.args[0]][1] is not None  # access recorded


def test_thumbnail_rendered_off_the_gui_thread(qtbot, store, ct_files):
    store.import_paths(ct_files(3, patient_id="BAG-T"))
    b = CacheBrowser(store, None, thumbnails=True)
    qtbot.addWidget(b)
    b.show()
    uid = store.series_list()[0].series_uid
    b.model.data(b.model.index(0, 0), Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: b.model.data(b.model.index(0, 0), Qt.ItemDataRole.DecorationRole) is not None,
                    timeout=5000)
    assert b.model.entries()[0].series_uid == uid
    b.shutdown()


def test_lazy_model_fetches_in_batches(qtbot, store):
    rows = [SeriesRow(f"P{k:05d}", "", f"1.{k}", "20261101", "", "", f"2.{k}", 1, "CT", "", "",
                      1, 1, 10, 1000.0 + k, 1000.0 + k) for k in range(1200)]
    store.add_index_rows(rows)
    b = CacheBrowser(store, None, thumbnails=False)
    qtbot.addWidget(b)
    assert len(b.model.entries()) == 1200
    assert b.model.rowCount() < 1200 and b.model.canFetchMore()
    b.set_filter("P01150")
    assert _rows(b) == ["P01150"]
    b.shutdown()


def test_scans_are_grouped_by_bag_and_the_group_can_be_switched_off(qtbot, store, ct_files):
    from station.ui.browser.browser import CacheBrowser

    # Arrival order interleaves two bags: A, B, A.
    for pid in ("BAG-A", "BAG-B", "BAG-A"):
        store.import_paths(ct_files(1, patient_id=pid))
    browser = CacheBrowser(store, None)
    qtbot.addWidget(browser)
    browser.refresh()
    model = browser.model
    assert model.grouped and browser.group_box.isChecked()
    ids = [e.patient_id for e in model.entries()]
    assert ids in (["BAG-A", "BAG-A", "BAG-B"], ["BAG-B", "BAG-A", "BAG-A"])
    texts = [model.data(model.index(r, COL_ID)) for r in range(3)]
    first_a = ids.index("BAG-A")
    assert texts[first_a].startswith("BAG-A") and texts[first_a].endswith("(2)")
    assert texts[first_a + 1].strip() == "└"  # the same bag as the row above
    browser.group_box.setChecked(False)
    assert [model.data(model.index(r, COL_ID)) for r in range(3)] == [e.patient_id for e in model.entries()]
    assert sorted(e.patient_id for e in model.entries()) == ["BAG-A", "BAG-A", "BAG-B"]
