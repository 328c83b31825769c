"""Figures a person can read: worst-case panels and prediction overlays (size, text, legend) and ROC curves that
stay apart."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from fastmtl.engine.evaluate.plots import ROC_STYLES, plot_roc, roc_figure
from fastmtl.engine.overlay import GT_COLOR, PRED_PALETTE, case_panel, prediction_overlay, save_png, upscale


def _disc(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.int64)


def _rows_with(region: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.flatnonzero((region == colour).all(axis=2).any(axis=1))


def test_upscale_is_nearest_by_an_integer_factor():
    small = np.arange(6, dtype=np.uint8).reshape(2, 3)
    big = upscale(small, 5)
    assert big.shape == (6, 9)  # factor 3: the shorter side 2 -> 6 >= 5
    assert (big[::3, ::3] == small).all() and (big[:3, :3] == 0).all()
    assert upscale(small, 2) is small


def test_case_panel_is_large_with_title_and_legend():
    image = np.full((32, 64, 3), 128, dtype=np.uint8)
    gt, pred = _disc(32, 64, 16, 28, 8), _disc(32, 64, 16, 36, 8)
    panel = case_panel(image, pred, gt, "ISIC_0000001  Dice 50.0%", ("lesion",))
    big = upscale(image, 256)
    assert big.shape[:2] == (256, 512)
    top = next(i for i in range(panel.shape[0]) if (panel[i, :512] == 128).all())  # first row of the image panel
    assert top > 0 and panel.shape[1] >= 2 * 512  # two panels of 512 x 256 side by side
    title, body, legend = panel[:top], panel[top : top + 256], panel[top + 256 :]
    assert (title < 100).any()  # the title text is drawn in black
    assert (body[:, 512:] == PRED_PALETTE[0]).all(axis=2).any() and (body[:, 512:] == GT_COLOR).all(axis=2).any()
    assert not (body[:, :512] != 128).any()  # the left panel is the untouched image
    gt_rows, pred_rows = _rows_with(legend, GT_COLOR), _rows_with(legend, PRED_PALETTE[0])
    assert gt_rows.size and pred_rows.size and gt_rows.max() < pred_rows.min()  # two legend entries, GT first


def test_case_panel_legend_lists_every_predicted_class_and_keeps_big_inputs():
    image = np.zeros((300, 400, 3), dtype=np.uint8)
    pred = np.zeros((300, 400), dtype=np.int64)
    pred[10:50, 10:50], pred[100:150, 100:150], pred[200:250, 200:250] = 1, 2, 3
    panel = case_panel(image, pred, None, "oct/vol1/12  Dice 10.0%", ("IRF", "SRF", "PED"))
    assert panel.shape[1] == 2 * 400 + 8  # no upscaling above 256 px
    legend = panel[panel.shape[0] - 3 * (panel.shape[0] - 300) // 4 :]
    assert not _rows_with(legend, GT_COLOR).size  # no ground truth, no GT legend entry
    for k in range(3):
        assert _rows_with(legend, PRED_PALETTE[k]).size


def _split_overlay(overlay: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text above, picture, legend below) of a prediction overlay whose picture's first column is not white (the
    text starts a few pixels in)."""
    rows = np.flatnonzero((overlay[:, 0] != 255).any(axis=1))
    return overlay[: rows[0]], overlay[rows[0] : rows[-1] + 1], overlay[rows[-1] + 1 :]


def test_a_tiny_prediction_overlay_is_enlarged_with_its_classes_and_a_legend():
    image = np.full((10, 10, 3), 128, dtype=np.uint8)
    pred = _disc(10, 10, 5, 6, 3)
    overlay = prediction_overlay(image, pred, "tiny", np.array([0.83, 0.1]), ("melanoma", "nevus"), ("lesion",))
    text, picture, legend = _split_overlay(overlay)
    assert picture.shape[:2] == (260, 260)  # 26x, whole pixels: the shorter side reaches 256
    assert (picture == PRED_PALETTE[0]).all(axis=2).any()  # the outline, in the class colour
    assert text.shape[0] >= 3 * 14 and (text < 100).any()  # id, classes, area: black text on white
    assert _rows_with(legend, PRED_PALETTE[0]).size  # the legend's swatch for "lesion"


def test_a_large_prediction_overlay_is_scaled_down_to_1024_px(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, size=(2000, 3000, 3), dtype=np.uint8)
    image[:, :3] = 77  # no white in the first column
    pred = _disc(2000, 3000, 1000, 1500, 600)
    overlay = prediction_overlay(image, pred, "large", None, (), ("lesion",))
    _, picture, _ = _split_overlay(overlay)
    assert picture.shape[:2] == (683, 1024) and overlay.shape[1] == 1024
    path = save_png(tmp_path / "large.png", overlay)
    assert path.stat().st_size < 2.5e6  # noise, the worst case for PNG; 18 MB at full size


def test_roc_curves_that_coincide_get_distinct_styles_and_their_auc(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 3), dtype=np.int64)
    labels[:20, 0] = labels[:20, 1] = 1
    labels[10:30, 2] = 1
    probs = rng.random((40, 3))
    probs[:, 1] = probs[:, 0]  # classes 0 and 1: the same curve, the same AUC
    names = ["a", "b", "c"]
    fig = roc_figure(probs, labels, names)
    lines = [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("chance")]
    assert [line.get_label().split(":")[0] for line in lines] == names
    assert lines[0].get_label().split("AUC")[1] == lines[1].get_label().split("AUC")[1]  # same AUC, both listed
    styles = [(line.get_linestyle(), line.get_marker(), line.get_linewidth(), line.get_color()) for line in lines]
    for i in range(3):
        for j in range(i + 1, 3):
            assert all(a != b for a, b in zip(styles[i], styles[j], strict=True)), (styles[i], styles[j])
    assert (lines[0].get_xdata() == lines[1].get_xdata()).all()  # the data do coincide
    assert lines[0].get_linewidth() > lines[1].get_linewidth() and lines[0].get_zorder() < lines[1].get_zorder()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][1:] == [line.get_label() for line in lines]
    assert to_rgba(lines[0].get_color()) != to_rgba(lines[1].get_color())
    path = plot_roc(probs, labels, names, tmp_path / "roc.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width >= 500


def test_roc_undefined_class_keeps_its_style_in_the_legend():
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    fig = roc_figure(np.full((4, 2), 0.5), labels, ["x", "y"])
    lines = fig.axes[0].get_lines()
    assert lines[2].get_label() == "y: AUC undefined (one label value)"
    assert lines[2].get_linestyle() != lines[1].get_linestyle() and lines[2].get_marker() == ROC_STYLES[1][1]


@pytest.mark.parametrize("shape", [(4, 3), (4, 2, 1)])
def test_roc_rejects_mismatched_shapes(shape):
    with pytest.raises(ValueError, match="must both be"):
        roc_figure(np.zeros(shape), np.zeros((4, 2)), ["x", "y"])
