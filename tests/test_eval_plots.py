"""Tests of eofm.eval.plots: each figure is a readable PNG, and inputs are validated."""

import numpy as np
import pytest
from PIL import Image

from eofm.eval import plots, robustness

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_width=200, min_height=150):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert min_width <= width <= 4000 and min_height <= height <= 4000


def test_robustness_curves(tmp_path):
    cells = {
        "gaussian_noise": {1: 0.8, 2: 0.7, 3: 0.6, 4: 0.5, 5: 0.4},
        "haze": {1: 0.85, 3: 0.8},
        "rotate": {1: 0.88, 2: 0.86, 3: 0.84, 4: 0.8, 5: 0.7},
        "translate": {5: 0.82},
    }
    summary = robustness.summarize(0.9, cells)
    path = plots.robustness_curves(summary, "OA", tmp_path / "new" / "dir" / "curves.png")
    assert path == tmp_path / "new" / "dir" / "curves.png"
    _assert_png(path)


def test_confusion_matrix(tmp_path):
    cm = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # The last class never occurs.
    names = ["forest", "water", "urban"]
    _assert_png(plots.confusion_matrix(cm, names, tmp_path / "rates.png"))
    _assert_png(plots.confusion_matrix(cm, names, str(tmp_path / "counts.png"), normalize=False))


@pytest.mark.parametrize(
    ("cm", "names", "match"),
    [
        (np.ones((2, 3)), ["a", "b"], "square"),
        (np.ones(4), ["a", "b"], "square"),
        (np.ones((2, 2)), ["a", "b", "c"], "3 class names"),
        (np.array([[1, -1], [0, 1]]), ["a", "b"], "non-negative"),
        (np.array([[1, np.nan], [0, 1]]), ["a", "b"], "finite"),
        (np.zeros((2, 2)), ["a", "b"], "no samples"),
    ],
)
def test_confusion_matrix_rejects(tmp_path, cm, names, match):
    with pytest.raises(ValueError, match=match):
        plots.confusion_matrix(cm, names, tmp_path / "cm.png")


def _segmentation(n=5, h=16, w=20, k=3):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(n, h, w, 3))
    truth = rng.integers(0, k, size=(n, h, w))
    pred = np.where(rng.uniform(size=(n, h, w)) < 0.7, truth, rng.integers(0, k, size=(n, h, w)))
    truth[:, :4] = 255  # Ignored reference pixels.
    return images, truth, pred


def test_overlays(tmp_path):
    images, truth, pred = _segmentation()
    names = ["forest", "water", "urban"]
    path = plots.overlays(
        images, truth, pred, tmp_path / "overlays.png", class_names=names, ignore_index=255
    )
    _assert_png(path, min_width=400, min_height=400)
    one = plots.overlays(
        images[:1],
        truth[:1],
        pred[:1],
        tmp_path / "one.png",
        class_names=names,
        ignore_index=255,
        max_items=1,
    )
    _assert_png(one, min_width=400)
    # max_items caps the rows: 4 items (default) give a taller figure than 1.
    with Image.open(path) as a, Image.open(one) as b:
        assert a.size[1] > 2 * b.size[1]


def test_change_overlays_show_both_dates_and_titles(tmp_path):
    images, truth, pred = _segmentation()
    names = ["forest", "water", "urban"]
    titles = [f"scene {i} rows 0-16, cols 0-16" for i in range(len(images))]
    kwargs = dict(class_names=names, ignore_index=255, max_items=2)
    plain = plots.overlays(images, truth, pred, tmp_path / "plain.png", **kwargs)
    dated = plots.overlays(
        images, truth, pred, tmp_path / "dated.png", before=images[:, ::-1], titles=titles, **kwargs
    )
    _assert_png(dated, min_width=500)
    # A fifth column (before) and the row titles widen the figure.
    with Image.open(plain) as a, Image.open(dated) as b:
        assert b.size[0] > a.size[0] * 1.15
    with pytest.raises(ValueError, match="before"):
        plots.overlays(images, truth, pred, tmp_path / "o.png", before=images[:1], **kwargs)
    with pytest.raises(ValueError, match="1 titles for"):
        plots.overlays(images, truth, pred, tmp_path / "o.png", titles=titles[:1], **kwargs)


def test_overlays_rejects(tmp_path):
    images, truth, pred = _segmentation()
    names = ["forest", "water", "urban"]
    with pytest.raises(ValueError, match="truth holds labels outside"):  # 255 is not ignored.
        plots.overlays(images, truth, pred, tmp_path / "o.png", class_names=names)
    with pytest.raises(ValueError, match="pred holds labels outside"):
        plots.overlays(
            images, truth, pred + 1, tmp_path / "o.png", class_names=names, ignore_index=255
        )
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        plots.overlays(
            images, truth[:, :8], pred, tmp_path / "o.png", class_names=names, ignore_index=255
        )
    with pytest.raises(ValueError, match="integer ids"):
        plots.overlays(
            images,
            truth,
            pred.astype(float),
            tmp_path / "o.png",
            class_names=names,
            ignore_index=255,
        )


def test_display_rgb_range_and_percentiles():
    rng = np.random.default_rng(1)
    image = rng.normal(1000.0, 300.0, size=(32, 24, 6))
    out = plots.display_rgb(image, [3, 2, 1])
    assert out.shape == (32, 24, 3) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    # Band 3 stretched between its own 2nd and 98th percentiles.
    lo, hi = np.percentile(image[..., 3], [2, 98])
    np.testing.assert_allclose(
        out[..., 0], np.clip((image[..., 3] - lo) / (hi - lo), 0, 1), rtol=1e-6, atol=1e-6
    )
    # A full-range stretch maps the band's min to 0 and max to 1 exactly.
    ramp = np.arange(12.0).reshape(3, 4, 1).repeat(3, axis=-1)
    np.testing.assert_allclose(
        plots.display_rgb(ramp, [0, 1, 2], percentiles=(0, 100))[..., 0], ramp[..., 0] / 11
    )


def test_display_rgb_nan_safe():
    image = np.arange(48.0).reshape(4, 4, 3)
    image[0, 0, 0] = np.nan
    image[1, 1, 1] = np.inf
    image[..., 2] = np.nan  # An all-NaN band.
    with np.errstate(all="raise"):
        out = plots.display_rgb(image, [0, 1, 2], percentiles=(0, 100))
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert out[0, 0, 0] == 0 and out[1, 1, 1] == 0
    assert out[..., 0].max() == 1 and (out[..., 2] == 0).all()
    # A constant band comes out black rather than dividing by zero.
    assert (plots.display_rgb(np.ones((4, 4, 3)), [0, 1, 2]) == 0).all()


@pytest.mark.parametrize(
    ("indices", "percentiles", "match"),
    [
        ([0, 1], (2, 98), "3 band indices"),
        ([0, 1, 6], (2, 98), "3 band indices"),
        ([0, 1, 2], (98, 2), "percentiles"),
    ],
)
def test_display_rgb_rejects(indices, percentiles, match):
    with pytest.raises(ValueError, match=match):
        plots.display_rgb(np.zeros((4, 4, 6)), indices, percentiles=percentiles)


def test_display_rgb_feeds_overlays(tmp_path):
    rng = np.random.default_rng(2)
    multispectral = rng.uniform(0, 10000, size=(2, 16, 16, 13))
    multispectral[0, :2, :2] = np.nan
    images = np.stack([plots.display_rgb(x, [3, 2, 1]) for x in multispectral])
    truth = rng.integers(-1, 2, size=(2, 16, 16))
    pred = rng.integers(0, 2, size=(2, 16, 16))
    _assert_png(plots.overlays(images, truth, pred, tmp_path / "ms.png", class_names=["a", "b"]))
