"""The resumable scene store and the whole-scene loop: completeness before and after finalize,
georeferencing, resume after a kill, refusal of other settings, and memory flat in scene size."""

import tracemalloc

import affine
import numpy as np
import pytest
import rasterio.crs
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
import zarr
from infer_scenes import coordinate_reader, smooth_predictor

from eofm.infer.scene import run_scene
from eofm.infer.store import SceneStore

HEIGHT, WIDTH, WINDOW, STRIDE, TILE = 300, 200, 32, 24, 64
TRANSFORM = affine.Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
CRS = "EPSG:32633"


def new_store(path, out_stride=1, **settings):
    defaults = {"height": HEIGHT, "width": WIDTH, "features": 1, "tile": TILE}
    return SceneStore(path, out_stride=out_stride, **{**defaults, "fingerprint": "m@1", **settings})


def run(store, predict, out_stride=1, **kwargs):
    return run_scene(
        coordinate_reader(),
        store.height,
        store.width,
        WINDOW,
        STRIDE,
        TILE,
        predict,
        store,
        batch_size=8,
        out_stride=out_stride,
        **kwargs,
    )


def arrays(store):
    return {name: array[...] for name, array in store.group.arrays()}


@pytest.mark.parametrize("out_stride", [1, 8])
def test_store_is_incomplete_until_finalize_then_georeferenced(tmp_path, out_stride):
    path = tmp_path / "out.zarr"
    store = new_store(path, out_stride)
    run(store, smooth_predictor(WINDOW, out_stride), out_stride)

    with pytest.raises(ValueError, match="Consolidated metadata .* not found"):
        xr.open_zarr(path, consolidated=True)
    assert xr.open_zarr(path, consolidated=False).attrs["complete"] is False

    store.finalize(CRS, TRANSFORM, feature_names=["field"], attrs={"model": "mae:tiny"})
    ds = xr.open_zarr(path)
    assert ds.attrs["complete"] is True and ds.attrs["model"] == "mae:tiny"
    cell_transform = TRANSFORM @ affine.Affine.scale(out_stride)
    assert ds.rio.crs == rasterio.crs.CRS.from_string(CRS)
    assert ds.rio.transform().almost_equals(cell_transform)
    assert ds.prediction.rio.crs == ds.rio.crs
    rows, cols = -(-HEIGHT // out_stride), -(-WIDTH // out_stride)
    assert ds.prediction.dims == ("y", "x", "feature") and ds.prediction.shape == (rows, cols, 1)
    assert list(ds.feature.values) == ["field"]
    np.testing.assert_allclose(ds.x[0], 500_000 + 5 * out_stride)
    np.testing.assert_allclose(ds.y[-1], 4_000_000 - 10 * out_stride * (rows - 0.5))
    np.testing.assert_array_equal(ds.prediction.values, store.group["prediction"][...])


def test_finalize_refuses_missing_tiles(tmp_path):
    store = new_store(tmp_path / "out.zarr")
    with pytest.raises(ValueError, match="20 tiles are not done yet"):
        store.finalize(CRS, TRANSFORM)


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
    predict = smooth_predictor(WINDOW, 1, offset_per_window=1.0)
    whole = new_store(tmp_path / "whole.zarr")
    full = run(whole, predict)

    calls = []

    def killed_in_second_tile_row(images, valid):
        if images[:, 0, 0, 0].max() >= TILE:  # a window reaching below the first tile row
            raise KeyboardInterrupt
        return predict(images, valid)

    def counting(images, valid):
        calls.append(len(images))
        return predict(images, valid)

    store = new_store(tmp_path / "resumed.zarr")
    with pytest.raises(KeyboardInterrupt):
        run(store, killed_in_second_tile_row)
    first_row = {(0, c) for c in range(store.tile_grid[1])}
    assert store.done_tiles() == first_row

    store = new_store(tmp_path / "resumed.zarr")
    assert store.done_tiles() == first_row
    reports = []
    resumed = run(store, counting, progress=reports.append)
    assert [r["tiles_done"] for r in reports] == list(range(len(first_row) + 1, 21))
    assert reports[-1]["eta_s"] == 0 and reports[-1]["tiles_total"] == 20
    assert resumed["tiles"] == full["tiles"] - len(first_row)
    assert sum(calls) == resumed["windows_computed"] < full["windows_computed"]
    before, after = arrays(whole), arrays(store)
    assert before.keys() == after.keys() == {"prediction", "valid", "tile_done"}
    for name in before:
        assert np.array_equal(before[name], after[name], equal_nan=True), name

    again = run(new_store(tmp_path / "resumed.zarr"), counting)
    assert again["tiles"] == again["windows_computed"] == 0


def test_a_tile_is_recorded_done_only_after_its_chunks(tmp_path, monkeypatch):
    """A kill while the second tile's mask is written leaves only the first tile done."""
    store = new_store(tmp_path / "out.zarr")
    write = zarr.Array.__setitem__
    masks_written = []

    def killed_at_second_mask(array, key, value):
        if array.basename == "valid":
            masks_written.append(key)
            if len(masks_written) == 2:
                raise KeyboardInterrupt
        write(array, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", killed_at_second_mask)
    with pytest.raises(KeyboardInterrupt):
        run(store, smooth_predictor(WINDOW, 1))
    assert store.done_tiles() == {(0, 0)}


def test_processes_take_disjoint_tiles(tmp_path):
    predict = smooth_predictor(WINDOW, 1, offset_per_window=1.0)
    whole = new_store(tmp_path / "whole.zarr")
    run(whole, predict)
    split = new_store(tmp_path / "split.zarr")
    first = run(split, predict, process_index=0, process_count=2)
    second = run(split, predict, process_index=1, process_count=2)
    assert first["tiles"] + second["tiles"] == 20 and split.done_tiles() == whole.done_tiles()
    for name, values in arrays(whole).items():
        assert np.array_equal(values, arrays(split)[name], equal_nan=True), name


@pytest.mark.parametrize(
    "setting, value",
    [("height", 301), ("tile", 32), ("dtype", "float64"), ("fingerprint", "m@2")],
)
def test_reopening_with_other_settings_is_refused(tmp_path, setting, value):
    path = tmp_path / "out.zarr"
    store = new_store(path)
    run(store, smooth_predictor(WINDOW, 1))
    written = arrays(store)
    with pytest.raises(ValueError, match=f"{setting}=.* on disk, .*{value}.* asked"):
        new_store(path, **{setting: value})
    reopened = new_store(path)
    assert len(reopened.done_tiles()) == 20
    for name, values in arrays(reopened).items():
        assert np.array_equal(values, written[name], equal_nan=True), name


def test_a_path_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "scene.tif").write_bytes(b"not a store")
    with pytest.raises(ValueError, match="scene.tif exists and is not a Zarr v3 group"):
        new_store(tmp_path / "scene.tif")
    assert (tmp_path / "scene.tif").read_bytes() == b"not a store"


def test_memory_is_flat_in_scene_size(tmp_path):
    """The peak of what run_scene allocates is the same for a 512^2 and a 2048^2 scene."""

    def peak(size):
        store = new_store(tmp_path / f"{size}.zarr", height=size, width=size, tile=256)
        tracemalloc.start()
        run_scene(
            coordinate_reader(),
            size,
            size,
            128,
            112,
            256,
            lambda images, valid: images[..., :1],
            store,
            batch_size=4,
        )
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return peak

    small, large = peak(512), peak(2048)
    assert large < 1.5 * small, (small, large)
    assert large < 2048 * 2048 * 4 / 2  # under half of one 2048^2 f32 band
