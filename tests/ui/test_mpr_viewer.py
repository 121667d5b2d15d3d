"""SliceViewer beyond the axial plane: MPR geometry and the linked crosshair, presets by
mode, colour maps, slabs, the rotating projection, threat boxes, ruler and region
statistics, and the keys, on small volumes whose every voxel is known."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QColor, QMouseEvent
from PySide6.QtWidgets import QApplication

from station.core.synth import bags as synth
from station.ui.viewer.colormaps import argb_to_rgb
from station.ui.viewer.widget import SliceViewer, window_presets
from station.ui.viewer.pane import THREAT_COLORS
from tests.core.test_mpr import SPACING, write_classic

NZ, NY, NX = 12, 20, 24
MARK = (17, 6, 9)  # x, y, z of the one metal voxel


def phantom() -> np.ndarray:
    """(z, y, x) MHU: air, an organic block, a light-metal block, metal, one marker."""
    v = np.zeros((NZ, NY, NX), dtype=np.int16)
    v[2:10, 10:18, 2:8] = 1500  # organic (explosive-like)
    v[2:10, 10:18, 10:14] = 3000  # aluminium-like
    v[2:10, 10:18, 16:22] = 8000  # metal
    v[MARK[2], MARK[1], MARK[0]] = 9500
    return v


@pytest.fixture
def volume_files(tmp_path):
    return write_classic(tmp_path / "mpr", phantom())


def open_viewer(qtbot, paths, *, mode="airport", layout="mpr", size=(900, 420)) -> SliceViewer:
    v = SliceViewer(mode=mode, layout=layout)
    qtbot.addWidget(v)
    v.resize(*size)
    v.show()
    v.set_series(None, paths, label="TEST")
    qtbot.waitUntil(lambda: v.volume is not None and v.volume.n_slices == len(paths) and not v.is_busy(),
                    timeout=5000)
    settle(qtbot, v)
    return v


def settle(qtbot, v: SliceViewer) -> None:
    qtbot.waitUntil(lambda: not v.is_computing(), timeout=5000)
    QApplication.processEvents()
    qtbot.wait(20)


@pytest.fixture
def viewer(qtbot, volume_files):
    v = open_viewer(qtbot, volume_files)
    yield v
    v.shutdown()


def pixel(v: SliceViewer, pane: str, point_mm: tuple[float, float]) -> QColor:
    """Colour on screen at a view point (mm) of a pane."""
    p = v.pane(pane)
    at = p.view_to_device().map(QPointF(*point_mm))
    image = p.viewport().grab().toImage()
    return image.pixelColor(round(at.x()), round(at.y()))


def send_mouse(pane, kind, at: QPointF, button, buttons, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    vp = pane.viewport()
    event = QMouseEvent(kind, at, vp.mapToGlobal(at.toPoint()), button, buttons, modifiers)
    QApplication.sendEvent(vp, event)


def drag(pane, start_mm, end_mm, button=Qt.MouseButton.LeftButton, steps=4) -> None:
    t = pane.view_to_device()
    a, b = t.map(QPointF(*start_mm)), t.map(QPointF(*end_mm))
    send_mouse(pane, QEvent.Type.MouseButtonPress, a, button, button)
    for i in range(1, steps + 1):
        time.sleep(0.012)  # pyqtgraph drops moves closer than 10 ms apart
        send_mouse(pane, QEvent.Type.MouseMove, a + (b - a) * (i / steps), Qt.MouseButton.NoButton, button)
    send_mouse(pane, QEvent.Type.MouseButtonRelease, b, button, Qt.MouseButton.NoButton)
    QApplication.processEvents()


def click(pane, at_mm, button=Qt.MouseButton.LeftButton) -> None:
    at = pane.view_to_device().map(QPointF(*at_mm))
    send_mouse(pane, QEvent.Type.MouseButtonPress, at, button, button)
    send_mouse(pane, QEvent.Type.MouseButtonRelease, at, button, Qt.MouseButton.NoButton)
    QApplication.processEvents()


def centre_mm(index: float, spacing: float) -> float:
    return (index + 0.5) * spacing


DZ, DY, DX = SPACING


# -- MPR geometry and the crosshair ----------------------------------------------------------


def test_a_known_voxel_appears_in_the_right_place_in_every_plane(viewer):
    x, y, z = MARK
    viewer.set_crosshair(x, y, z)
    assert viewer.crosshair == (x, y, z)
    axial = viewer.displayed_values("axial")
    coronal = viewer.displayed_values("coronal")
    sagittal = viewer.displayed_values("sagittal")
    assert axial.shape == (NY, NX) and axial[y, x] == 9500
    # Coronal: rows are slices (z), columns x. Airport sagittal: the side view, rows y, columns z.
    assert coronal.shape == (NZ, NX) and coronal[z, x] == 9500
    assert sagittal.shape == (NY, NZ) and sagittal[y, z] == 9500
    # And each pane maps the voxel's centre (mm) back to that very pixel.
    assert viewer.pane("axial").pixel_at(QPointF(centre_mm(x, DX), centre_mm(y, DY))) == (y, x)
    assert viewer.pane("coronal").pixel_at(QPointF(centre_mm(x, DX), centre_mm(z, DZ))) == (z, x)
    assert viewer.pane("sagittal").pixel_at(QPointF(centre_mm(z, DZ), centre_mm(y, DY))) == (y, z)
    # The crosshair lines go through the voxel in every plane.
    assert viewer.pane("coronal").crosshair == (centre_mm(x, DX), centre_mm(z, DZ))
    assert viewer.pane("sagittal").crosshair == (centre_mm(z, DZ), centre_mm(y, DY))


def test_clinic_planes_follow_the_radiological_convention(qtbot, volume_files):
    v = open_viewer(qtbot, volume_files, mode="clinic")
    try:
        x, y, z = MARK
        v.set_crosshair(x, y, z)
        sagittal = v.displayed_values("sagittal")
        assert sagittal.shape == (NZ, NY) and sagittal[z, y] == 9500  # rows z, columns y
        assert not v.pane("sagittal").view.yInverted()  # head (high z) up
    finally:
        v.shutdown()


def test_click_and_drag_in_one_plane_move_the_others(qtbot, viewer):
    x, y, z = MARK
    viewer.set_crosshair(0, 0, 0)
    click(viewer.pane("axial"), (centre_mm(x, DX), centre_mm(y, DY)))
    assert viewer.crosshair == (x, y, 0)
    assert viewer.displayed_values("coronal")[:, x].max() == 9500  # the coronal plane now holds it
    # A drag in the coronal plane (x across, z up) moves the axial slice with it.
    drag(viewer.pane("coronal"), (centre_mm(2, DX), centre_mm(1, DZ)), (centre_mm(x, DX), centre_mm(z, DZ)))
    assert viewer.crosshair == (x, y, z)
    assert viewer.current_index == z
    assert viewer.displayed_values("axial")[y, x] == 9500


def test_mpr_fills_in_while_the_scan_arrives(qtbot, volume_files):
    ordered = sorted(volume_files)
    v = open_viewer(qtbot, ordered[:4])
    try:
        coronal = v.displayed_values("coronal")
        assert coronal.shape == (4, NX)
        v.add_paths(ordered[4:])
        qtbot.waitUntil(lambda: v.volume.n_slices == NZ and not v.is_busy(), timeout=5000)
        settle(qtbot, v)
        qtbot.waitUntil(lambda: v.displayed_values("coronal").shape == (NZ, NX), timeout=3000)
        assert np.isfinite(v.displayed_values("coronal")).all()
    finally:
        v.shutdown()


# -- windows, presets, colour maps -------------------------------------------------------------


def test_presets_and_labels_follow_the_mode(qtbot, viewer, volume_files):
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_3)  # airport, MHU: Organic
    assert viewer.window == (1250.0, 1500.0)
    assert "Organic · W 1500  L 1250 MHU" in viewer.overlay_text("br")
    qtbot.keyClick(viewer, Qt.Key.Key_6)  # Low penetration
    assert viewer.window_name == "Low penetration"
    names = [p.name for p in window_presets("airport", "MHU")]
    assert names == ["Full range", "Organic", "Metals", "High penetration", "Low penetration"]
    assert window_presets("airport", "HU")[1].center == 250.0  # the same organic band in HU
    assert [p.name for p in window_presets("clinic", "HU")] == ["Soft tissue", "Lung", "Bone", "Brain"]
    assert window_presets("clinic", "MHU")[1].center == 400.0  # lung in MHU
    assert window_presets("clinic", "US", planar=True) == []
    clinic = open_viewer(qtbot, volume_files, mode="clinic", layout="single")
    try:
        clinic.setFocus()
        qtbot.keyClick(clinic, Qt.Key.Key_3)
        assert clinic.window_name == "Lung" and clinic.window == (400.0, 1500.0)  # data in MHU
        assert "Lung · W 1500  L 400 MHU" in clinic.overlay_text("br")
        assert clinic.colormap == "gray"  # clinic opens in gray, airport in material colours
    finally:
        clinic.shutdown()


def test_right_drag_changes_the_window(qtbot, viewer):
    before = viewer.window
    drag(viewer.pane("axial"), (3.0, 3.0), (9.0, 3.0), button=Qt.MouseButton.RightButton)
    assert viewer.window[1] > before[1] and viewer.window_name == "Custom"


def test_material_palette_colours_known_densities(viewer):
    viewer.set_crosshair(23, 19, 5)  # out of the way of the pixels looked at
    viewer.set_window(2000, 4000)
    assert viewer.colormap == "material"
    y = centre_mm(13, DY)

    def rgb(x: int) -> tuple[int, int, int]:
        c = pixel(viewer, "axial", (centre_mm(x, DX), y))
        return c.red(), c.green(), c.blue()

    r, g, b = rgb(4)  # organic: orange
    assert r > g > b and r > 100
    r, g, b = rgb(12)  # light metal: green
    assert g > r and g > b
    r, g, b = rgb(18)  # metal: blue
    assert b > r and b > g
    r, g, b = rgb(0)  # air: gray, the window's dark end
    assert abs(r - g) <= 2 and abs(g - b) <= 2 and r < 40


def test_colour_maps_cycle_and_render(qtbot, viewer):
    viewer.set_crosshair(23, 19, 5)
    viewer.set_window(1500, 2)  # organic block exactly at the window centre
    at = (centre_mm(4, DX), centre_mm(13, DY))
    viewer.set_colormap("gray")
    assert abs(pixel(viewer, "axial", at).red() - 128) <= 2
    viewer.set_colormap("inverse")
    assert abs(pixel(viewer, "axial", at).red() - 127) <= 2
    viewer.set_colormap("hot")
    hot = pixel(viewer, "axial", at)
    assert hot.red() == 255 and hot.blue() == 0 and 100 < hot.green() < 160
    viewer.setFocus()
    seen = []
    for _ in range(4):
        qtbot.keyClick(viewer, Qt.Key.Key_C)
        seen.append(viewer.colormap)
    assert sorted(seen) == ["gray", "hot", "inverse", "material"]
    with pytest.raises(ValueError):
        viewer.set_colormap("rainbow")


def test_dual_energy_radiograph_is_coloured_by_material(qtbot, tmp_path):
    bag = synth.make_bag_volume(size=128, slices=48, threats=0, seed=3)
    paths = synth.write_dx(bag, tmp_path, dual_energy=True, seed=3)
    v = SliceViewer(mode="airport")
    qtbot.addWidget(v)
    v.resize(500, 400)
    v.show()
    v.set_series(None, paths)
    try:
        qtbot.waitUntil(lambda: v.volume is not None and v.volume.n_slices == 2 and not v.is_busy(), timeout=5000)
        qtbot.waitUntil(lambda: v.colormap == "material", timeout=5000)
        assert v.planar and v.visible_panes == ("axial",)
        v.set_layout("quad")
        assert v.visible_panes == ("axial",)  # a radiograph has no other planes
        settle(qtbot, v)
        water = next(i for i in bag.items if i.name.startswith("water"))
        (x, _, z), (ex, _, ez) = water.base_xyz, water.extent_xyz
        pane = v.pane("axial")
        row, col = x + ex // 2, z + ez // 2  # top view: rows x, columns z
        c = pixel(v, "axial", (pane.origin[0] + (col + 0.5) * pane.pixel_mm[1],
                               pane.origin[1] + (row + 0.5) * pane.pixel_mm[0]))
        assert c.red() > c.green() > c.blue(), c.getRgb()  # organic: orange
    finally:
        v.shutdown()


# -- slabs and projection ----------------------------------------------------------------------


def test_slab_modes_and_thickness_keys(qtbot, viewer):
    v = phantom().astype(np.float32)
    viewer.set_crosshair(MARK[0], MARK[1], MARK[2])
    viewer.set_slab("mip", 3 * DZ)  # 3 slices
    settle(qtbot, viewer)
    np.testing.assert_array_equal(viewer.displayed_values("axial"), v[MARK[2] - 1:MARK[2] + 2].max(axis=0))
    viewer.set_slab("minip")
    np.testing.assert_array_equal(viewer.displayed_values("axial"), v[MARK[2] - 1:MARK[2] + 2].min(axis=0))
    viewer.set_slab("avg")
    np.testing.assert_allclose(viewer.displayed_values("axial"), v[MARK[2] - 1:MARK[2] + 2].mean(axis=0), rtol=1e-6)
    # Coronal slab: 6 mm / 0.5 mm = 12 rows around y, along the y axis.
    lo = MARK[1] - 5
    np.testing.assert_allclose(viewer.displayed_values("coronal"), v[:, lo:lo + 12, :].mean(axis=1), rtol=1e-6)
    assert "Average slab 6 mm" in viewer.overlay_text("bl")
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_BracketRight)
    assert viewer.slab == ("avg", 10.0)
    qtbot.keyClick(viewer, Qt.Key.Key_S)
    assert viewer.slab[0] is None
    np.testing.assert_array_equal(viewer.displayed_values("axial"), v[MARK[2]])


def test_projection_at_0_and_90_degrees(qtbot, volume_files):
    v = open_viewer(qtbot, volume_files, layout="quad", size=(700, 600))
    try:
        vol = phantom()
        v.set_projection(0.0, "mip")
        qtbot.waitUntil(lambda: v.projection is not None and v.projection.angle_deg == 0.0
                        and v.projection.mode == "mip", timeout=5000)
        np.testing.assert_array_equal(v.projection.image, vol.max(axis=0))
        v.set_projection(90.0, "avg")
        qtbot.waitUntil(lambda: v.projection.angle_deg == 90.0 and v.projection.mode == "avg", timeout=5000)
        np.testing.assert_allclose(v.projection.image, vol.mean(axis=2).T, rtol=1e-5)
        v.setFocus()
        v._set_active("projection")
        qtbot.keyClick(v, Qt.Key.Key_Period)
        qtbot.waitUntil(lambda: v.projection.angle_deg == 100.0, timeout=5000)
        qtbot.keyClick(v, Qt.Key.Key_Home)  # in the projection pane: back to 0 degrees
        qtbot.waitUntil(lambda: v.projection.angle_deg == 0.0, timeout=5000)
        drag(v.pane("projection"), (0.0, 5.0), (4.0, 5.0))  # a drag turns it
        qtbot.waitUntil(lambda: v.projection.angle_deg != 0.0, timeout=5000)
        assert "Projection · Average" in v.overlay_text("tl", "projection")
        settle(qtbot, v)
    finally:
        v.shutdown()


# -- overlays and measurements -----------------------------------------------------------------


def test_threat_boxes_are_drawn_where_they_are_and_toggle(qtbot, viewer):
    viewer.set_threats([
        {"base": (2, 10, 2), "extent": (6, 8, 8), "label": "EXPLOSIVE", "source": "machine", "flag": "THREAT"},
        {"base": (16, 10, 2), "extent": (6, 8, 8), "source": "operator", "flag": "NO_THREAT"},
    ])
    viewer.set_crosshair(4, 14, 5)
    shapes = viewer.pane("axial").shapes
    assert [s.source for s in shapes] == ["machine", "operator"]
    left, top = shapes[0].points[0].x(), shapes[0].points[0].y()
    assert (left, top) == (2 * DX, 10 * DY)  # the box's outer voxel edges, in mm
    assert shapes[0].label == "ATR EXPLOSIVE" and shapes[1].label == "OP No Threat"
    # The coronal plane (y = 14) cuts both boxes, the side view (x = 4) the first only.
    assert len(viewer.pane("coronal").shapes) == 2 and len(viewer.pane("sagittal").shapes) == 1
    viewer.set_index(11)  # a slice outside both boxes
    assert viewer.pane("axial").shapes == []
    viewer.set_index(5)
    # Drawn on screen: the machine box's left edge (dashed) in its colour.
    red = QColor(THREAT_COLORS[("machine", "THREAT")])
    edge = [pixel(viewer, "axial", (2 * DX, (10 + i / 4) * DY)) for i in range(32)]
    assert any(abs(c.red() - red.red()) < 40 and abs(c.green() - red.green()) < 40 for c in edge)
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_T)
    assert not viewer.threats_visible and viewer.pane("axial").shapes == []
    assert "hidden (T)" in viewer.overlay_text("tr")
    qtbot.keyClick(viewer, Qt.Key.Key_T)
    assert len(viewer.pane("axial").shapes) == 2
    qtbot.keyClick(viewer, Qt.Key.Key_N)  # next threat: centre the crosshair on it
    assert viewer.crosshair == (5, 14, 6)  # box centre (2 + 2.5, 10 + 3.5, 2 + 3.5), rounded up


def test_ruler_measures_mm(qtbot, viewer):
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_D)
    assert viewer.tool == "ruler"
    before = viewer.crosshair
    drag(viewer.pane("axial"), (2.0, 1.0), (14.0, 6.0))  # 12 x 5 mm
    m = viewer.measurement
    assert m["kind"] == "ruler" and m["distance_mm"] == pytest.approx(13.0, abs=0.05)
    assert viewer.crosshair == before  # the ruler does not move the crosshair
    assert viewer.pane("axial").ruler[2] == "13.0 mm"
    qtbot.keyClick(viewer, Qt.Key.Key_Delete)
    assert viewer.measurement is None and viewer.pane("axial").ruler is None


def test_region_statistics_on_known_pixels(qtbot, viewer):
    viewer.set_crosshair(23, 19, 5)
    viewer.set_tool("roi")
    # Pixel centres inside x 4.8-9.6 mm, y 6-7 mm: columns 6-11, rows 12-13, that is two
    # organic columns (1500), two of air (0) and two of light metal (3000).
    drag(viewer.pane("axial"), (4.8, 6.0), (9.6, 7.0))
    m = viewer.measurement
    assert m["kind"] == "roi" and m["pixels"] == 12
    assert m["area_mm2"] == pytest.approx(12 * DX * DY)
    assert m["min"] == 0 and m["max"] == 3000
    assert m["mean"] == pytest.approx(1500.0)
    assert m["std"] == pytest.approx(float(np.std([1500] * 4 + [0] * 4 + [3000] * 4)))
    assert "area 4.8 mm²" in viewer.pane("axial").roi[1]
    viewer.set_index(0)  # the region stays; its numbers follow the slice on screen
    assert viewer.measurement["max"] == 0


def test_the_analyst_marks_a_threat_box_in_two_planes(qtbot, viewer):
    """B: a drag in the axial plane sets the box's x and y on the slice on screen; a drag in
    the coronal plane then sets its depth (and x again); Delete removes it."""
    viewer.set_crosshair(5, 5, 4)
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_B)
    assert viewer.tool == "mark"
    drag(viewer.pane("axial"), (2.0, 1.1), (8.4, 4.2))  # columns 2-10, rows 2-8
    box = viewer.drawn_box
    assert (box.base, box.extent) == ((2.0, 2.0, 4.0), (9.0, 7.0, 1.0)) and box.source == "operator"
    assert viewer.crosshair == (5, 5, 4)  # marking does not move the crosshair
    assert [s.label for s in viewer.pane("axial").shapes] == ["OP Marked"]
    drag(viewer.pane("coronal"), (2.5, 4.2), (6.0, 14.2))  # columns 3-7, slices 2-7
    box = viewer.drawn_box
    assert (box.base, box.extent) == ((3.0, 2.0, 2.0), (5.0, 7.0, 6.0))
    viewer.set_index(9)  # past the box: not outlined on that slice
    assert viewer.pane("axial").shapes == []
    qtbot.keyClick(viewer, Qt.Key.Key_Delete)
    assert viewer.drawn_box is None


# -- layout and keys ---------------------------------------------------------------------------


def test_layout_and_active_pane_keys(qtbot, viewer):
    assert viewer.visible_panes == ("axial", "coronal", "sagittal")
    viewer.setFocus()
    qtbot.keyClick(viewer, Qt.Key.Key_L)
    assert viewer.layout_name == "quad" and viewer.pane("projection").isVisible()
    qtbot.keyClick(viewer, Qt.Key.Key_L)
    assert viewer.layout_name == "single" and not viewer.pane("coronal").isVisible()
    qtbot.keyClick(viewer, Qt.Key.Key_L)
    assert viewer.layout_name == "mpr"
    # Keys act on the active pane: in the coronal pane they move the coronal plane.
    viewer.set_crosshair(5, 5, 5)
    qtbot.keyClick(viewer, Qt.Key.Key_V)
    assert viewer.active_pane == "coronal"
    qtbot.keyClick(viewer, Qt.Key.Key_Down)
    assert viewer.crosshair == (5, 6, 5)
    qtbot.keyClick(viewer, Qt.Key.Key_End)
    assert viewer.crosshair == (5, NY - 1, 5)
    qtbot.keyClick(viewer, Qt.Key.Key_V)
    qtbot.keyClick(viewer, Qt.Key.Key_Home)
    assert viewer.active_pane == "sagittal" and viewer.crosshair == (0, NY - 1, 5)
    qtbot.keyClick(viewer, Qt.Key.Key_H)
    assert viewer.help_visible and ("T · N", "threat boxes · next threat") in viewer.pane("axial").help
    qtbot.keyClick(viewer, Qt.Key.Key_H)
    assert not viewer.help_visible and viewer.pane("axial").help == ()
    settle(qtbot, viewer)


def test_colour_tables_match_the_palette():
    from station.ui.viewer.colormaps import material_lut

    lut = material_lut()
    r, g, b = argb_to_rgb(lut[1, 255])
    assert r > g > b  # organic: orange
    assert argb_to_rgb(lut[4, 200]) == (0, 0, 0)  # opaque: black
    inverted = material_lut(inverted=True)
    assert argb_to_rgb(inverted[1, 0])[0] > argb_to_rgb(inverted[1, 255])[0]  # thin = bright
