"""Whole-scene tiling: the window grid, the blend weights, and seamless blending of overlapping
window outputs across windows and tiles, for pixel maps and token grids, with nodata."""

import numpy as np
import pytest
from infer_scenes import coordinate_reader, smooth, smooth_grid, smooth_predictor

from eofm.infer import tiling
from eofm.infer.scene import run_scene
from eofm.infer.store import SceneStore

HEIGHT, WIDTH, WINDOW, OVERLAP, TILE = 1000, 700, 64, 16, 256
STRIDE = WINDOW - OVERLAP


def predict_scene(
    tmp_path, predict, out_stride, *, height=HEIGHT, width=WIDTH, stride=STRIDE, **kwargs
):
    """Runs `predict` over a coordinate scene into a new store: (store, summary)."""
    store_kwargs = {k: kwargs.pop(k) for k in ("features", "dtype", "nodata") if k in kwargs}
    store = SceneStore(
        tmp_path / "out.zarr",
        height=height,
        width=width,
        tile=TILE,
        out_stride=out_stride,
        fingerprint="test",
        **{"features": 1, **store_kwargs},
    )
    summary = run_scene(
        coordinate_reader(kwargs.pop("valid_from_col", 0)),
        height,
        width,
        WINDOW,
        stride,
        TILE,
        predict,
        store,
        batch_size=16,
        out_stride=out_stride,
        **kwargs,
    )
    return store, summary


def stored(store):
    return store.group["prediction"][...], store.group["valid"][...]


def test_blend_weights_are_smooth_positive_and_separable():
    w = tiling.blend_weights(WINDOW, OVERLAP)
    assert w.shape == (WINDOW, WINDOW) and w.dtype == np.float32
    assert w.min() > 0 and w[OVERLAP:-OVERLAP, OVERLAP:-OVERLAP].min() == 1
    assert w[0, 0] < 1e-3 and w[0, WINDOW // 2] < 0.01  # ~0 at the edges
    np.testing.assert_allclose(w, np.outer(w[:, WINDOW // 2], w[WINDOW // 2]), rtol=1e-6)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    assert np.abs(np.diff(w[WINDOW // 2])).max() < 0.1  # no step anywhere along the ramp
    with pytest.raises(ValueError, match="overlap=40 must be in"):
        tiling.blend_weights(WINDOW, 40)


def test_tiles_share_the_global_window_grid():
    rows, cols = tiling.window_grid(HEIGHT, WIDTH, WINDOW, STRIDE)
    assert rows[-1] == HEIGHT - WINDOW and cols[-1] == WIDTH - WINDOW
    plan = tiling.tiles(HEIGHT, WIDTH, TILE)
    assert len(plan) == 4 * 3 and (plan[-1].y1, plan[-1].x1) == (HEIGHT, WIDTH)
    union = set()
    for t in plan:
        corners = tiling.windows_for(t, WINDOW, STRIDE, HEIGHT, WIDTH)
        assert all(
            y < t.y1 and y + WINDOW > t.y0 and x < t.x1 and x + WINDOW > t.x0 for y, x in corners
        )
        union.update(corners)
    assert union == {(y, x) for y in rows for x in cols}


@pytest.mark.parametrize("out_stride", [1, 8])
def test_blend_reproduces_a_smooth_field(tmp_path, out_stride):
    store, summary = predict_scene(tmp_path, smooth_predictor(WINDOW, out_stride), out_stride)
    values, valid = stored(store)
    rows, cols = -(-HEIGHT // out_stride), -(-WIDTH // out_stride)
    assert values.shape == (rows, cols, 1) and valid.all()
    np.testing.assert_allclose(values[..., 0], smooth_grid(rows, cols, out_stride), atol=1e-5)
    assert summary["tiles"] == 12 and summary["windows_skipped"] == 0


@pytest.mark.parametrize("out_stride, stride", [(1, STRIDE), (4, WINDOW // 2)])
def test_blend_has_no_seams_between_windows_or_tiles(tmp_path, out_stride, stride):
    """Windows that disagree (a random offset each): the tiled blend equals the blend of the
    whole scene as one tile, and varies far more smoothly than the hard-edged average. (A token
    grid blends smoothly when the overlap spans several cells: here 32 px = 8 cells.)"""
    predict = smooth_predictor(WINDOW, out_stride, offset_per_window=1.0)
    store, _ = predict_scene(tmp_path, predict, out_stride, stride=stride)
    tiled, _ = stored(store)

    whole = tiling.Tile(0, 0, 0, HEIGHT, 0, WIDTH)
    corners = tiling.windows_for(whole, WINDOW, stride, HEIGHT, WIDTH, out_stride)
    read = coordinate_reader()
    images = np.stack([read(slice(y, y + WINDOW), slice(x, x + WINDOW))[0] for y, x in corners])
    outputs = predict(images, None)
    weights = tiling.blend_weights(WINDOW, WINDOW - stride)
    blended, _ = tiling.blend_tile(whole, corners, outputs, weights, out_stride)
    hard, _ = tiling.blend_tile(whole, corners, outputs, np.ones_like(weights), out_stride)

    np.testing.assert_allclose(tiled, blended, atol=1e-6)

    def max_jump(a):
        """Largest step between neighbouring cells of a minus the smooth field."""
        offsets = a[..., 0] - smooth_grid(*a.shape[:2], out_stride)
        return max(np.abs(np.diff(offsets, axis=0)).max(), np.abs(np.diff(offsets, axis=1)).max())

    assert max_jump(tiled) < 0.5 * max_jump(hard)


@pytest.mark.parametrize("kind", ["probabilities", "classes"])
def test_invalid_windows_are_skipped_and_nodata(tmp_path, kind):
    """The scene's left third is invalid: its windows are not predicted, and the cells no
    predicted window covers are nodata and flagged invalid."""
    height, width, cut = 300, 300, 100

    def predict(images, valid):
        assert valid.any(axis=(1, 2, 3)).all()
        y, x = images[..., 0], images[..., 1]
        positive = (smooth(y, x) > 0).astype(np.float32)
        return np.stack([positive, 1 - positive], -1)

    if kind == "classes":
        options = {
            "finish": tiling.class_map,
            "predict_features": 2,
            "dtype": "int16",
            "nodata": -1,
        }
    else:
        options = {"features": 2}
    store, summary = predict_scene(
        tmp_path, predict, 1, height=height, width=width, valid_from_col=cut, **options
    )
    values, valid = stored(store)

    skipped = computed = 0
    first_col = width
    for t in tiling.tiles(height, width, TILE):
        for y, x in tiling.windows_for(t, WINDOW, STRIDE, height, width):
            if x + WINDOW <= cut:
                skipped += 1
            else:
                computed += 1
                first_col = min(first_col, x)
    assert (summary["windows_skipped"], summary["windows_computed"]) == (skipped, computed)
    assert skipped > 0 and 0 < first_col < cut
    np.testing.assert_array_equal(
        valid, np.broadcast_to(np.arange(width) >= first_col, valid.shape)
    )
    if kind == "classes":
        assert values.dtype == np.int16
        assert (values[~valid] == -1).all() and np.isin(values[valid], [0, 1]).all()
    else:
        assert np.isnan(values[~valid]).all() and np.isfinite(values[valid]).all()
