"""Trained dense heads loaded from a finetune workdir alone: the Sen1Floods11 water map of the
evaluation, rebuilt from the fit checkpoints' metadata and weights, the runs that cannot give
one, and scene maps of the head written as COGs (`eofm.infer.maps`)."""

import json
import shutil
import types
from pathlib import Path

import jax
import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
from run_checks import load_script

from eofm.data.spec import SensorSpec
from eofm.eval import dense, windows
from eofm.infer import heads, maps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def floods_run(tmp_path_factory, finetune_config):
    """(workdir, config, report, the evaluation's class map of the held-out rows) of a 16-step
    UPerNet water head on a random SMARTIES tiny, checkpointed at steps 8 and 16."""
    config = finetune_config("sen1floods11")
    config.encoder = "random:configs/pretrain/smarties.py:tiny"
    config.fit.update(total_steps=16, warmup_fraction=0.1, log_every=8, batch_size=8)
    config.fit.checkpoint.every_steps = 8
    config.head.channels = 16
    workdir = tmp_path_factory.mktemp("floods")
    maps = []
    evaluate = dense.Evaluator.evaluate

    def keep_maps(self, scenes, corruption=None, threshold=None):
        metrics, preds, thresholded = evaluate(self, scenes, corruption, threshold)
        maps.append(preds)
        return metrics, preds, thresholded

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        patch.setattr(dense.Evaluator, "evaluate", keep_maps)
        result = dense.run(config, workdir)
    (water,) = maps[0]
    return workdir, config, result, water


@pytest.fixture
def copied_run(floods_run, tmp_path):
    """A copy of the trained run's workdir, to damage."""
    workdir = tmp_path / "run"
    shutil.copytree(floods_run[0], workdir)
    return workdir


def test_the_loaded_head_predicts_the_evaluations_water_map(floods_run, monkeypatch):
    monkeypatch.chdir(ROOT)
    workdir, config, result, evaluated = floods_run
    trained = heads.load_head(workdir)
    assert trained.keys == ("s2",) and trained.class_names == ["no_water", "water"]
    assert trained.num_classes == 2 and trained.step == 16
    assert (trained.window, trained.stride) == (96, 48)
    assert trained.specs == {"s2": SensorSpec.full("sentinel2_l1c")}
    assert trained.encoder.ref == config.encoder and trained.normalization == "percentile_clip"

    # The held-out rows of the raw chip, normalised with the saved training statistics only.
    train, test, _ = dense.load_scenes(config)
    scene = test[0]
    images = {"s2": trained.normalize("s2", scene.raw["s2"], scene.valid["s2"])}
    expected = dense.Normalizers(train, trained.normalization)(scene, "s2")
    np.testing.assert_array_equal(images["s2"], expected)

    # The evaluation's map: the argmax of the windows' logits averaged, exactly.
    logits = windows.sliding_window(
        trained.logits, images, trained.window, trained.stride, trained.num_classes
    )
    water = logits.argmax(-1)
    np.testing.assert_array_equal(water, evaluated)
    score = trained.task.score([water], [scene.mask], trained.num_classes)
    report = json.loads((workdir / "report.json").read_text())
    assert score["miou_macro"] == pytest.approx(result["metrics"]["miou_macro"], abs=1e-9)
    assert score["miou_macro"] == pytest.approx(report["metrics"]["miou_macro"], abs=1e-9)

    # `predict`: each window's class probabilities, the softmax of its logits.
    batch = {"s2": images["s2"][None, :96, :96]}
    probabilities = trained.predict(batch)
    assert probabilities.shape == (1, 96, 96, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, jax.nn.softmax(trained.logits(batch)), atol=1e-6)
    np.testing.assert_array_equal(probabilities[0].argmax(-1), trained.logits(batch)[0].argmax(-1))


def test_normalize_refuses_images_of_other_bands(floods_run, monkeypatch):
    monkeypatch.chdir(ROOT)
    trained = heads.load_head(floods_run[0])
    with pytest.raises(ValueError, match=r"has 3 bands.*sentinel2_l1c bands \['B01'"):
        trained.normalize("s2", np.zeros((8, 8, 3), np.float32), np.ones((8, 8, 3), bool))
    with pytest.raises(KeyError, match=r"'s1'.*\['s2'\]"):
        trained.normalize("s1", np.zeros((8, 8, 2), np.float32), np.ones((8, 8, 2), bool))


def test_a_workdir_without_a_fit_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "fit" / "checkpoints")):
        heads.load_head(tmp_path)


def test_an_unfinished_fit_names_the_missing_step(copied_run):
    shutil.rmtree(copied_run / "fit" / "checkpoints" / "16")  # killed after step 8's checkpoint
    with pytest.raises(FileNotFoundError, match="stopped at step 8.*last step 16 is missing"):
        heads.load_head(copied_run)


def _edit_meta(workdir: Path, edit) -> None:
    """Applies `edit` to the metadata dict of every fit checkpoint of `workdir`."""
    files = sorted((workdir / "fit" / "checkpoints").glob("*/meta/metadata"))
    assert [f.parts[-3] for f in files] == ["16", "8"]
    for path in files:
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))


def test_a_run_saved_without_the_inference_metadata_is_told_to_rerun(copied_run):
    _edit_meta(copied_run, lambda meta: meta.pop("inference"))
    with pytest.raises(ValueError, match="saved without what inference needs.*rerun finetune"):
        heads.load_head(copied_run)


def test_the_head_loads_from_its_workdir_alone(floods_run, copied_run):
    def encoder_gone(meta):
        meta["inference"]["config"]["encoder"] = "/gone/pretraining_run"
        meta["inference"]["encoder"]["ref"] = "/gone/pretraining_run"

    _edit_meta(copied_run, encoder_gone)
    moved, original = heads.load_head(copied_run), heads.load_head(floods_run[0])
    assert moved.encoder.ref == "/gone/pretraining_run"
    window = np.random.default_rng(0).normal(size=(2, 96, 96, 13)).astype(np.float32)
    np.testing.assert_array_equal(moved.logits({"s2": window}), original.logits({"s2": window}))


def test_a_classification_head_makes_no_map(copied_run):
    # What the fit of a classification run records.
    _edit_meta(copied_run, lambda meta: meta.update(inference={"task": "classification"}))
    with pytest.raises(ValueError, match="classification head; only dense heads"):
        heads.load_head(copied_run)


# Scene maps (`eofm.infer.maps`, `scripts/infer_scene.py --head`).

S2_CHIP = "sen1floods11_sample/S2/Spain_7370579_S2Hand.tif"
TEST_ROWS = slice(384, 512)  # the held-out rows of the chip: test_region (0.75, 0, 0.25, 1)


@pytest.fixture(scope="module")
def test_rows_scene(shared_data, tmp_path_factory):
    """The held-out rows of the Sentinel-2 chip as a GeoTIFF of their own, georeferenced."""
    path = tmp_path_factory.mktemp("scene") / "test_rows.tif"
    with rasterio.open(shared_data / S2_CHIP) as src:
        window = rasterio.windows.Window(0, TEST_ROWS.start, src.width, TEST_ROWS.stop - 384)
        profile = {
            **src.profile,
            "height": window.height,
            "transform": src.window_transform(window),
        }
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.descriptions = src.descriptions
    return path


def map_settings(**kwargs):
    return {"tile": 128, "blocksize": 128, "show_progress": False, **kwargs}


def test_the_water_map_cog_equals_the_evaluations_map(floods_run, test_rows_scene, tmp_path):
    workdir, config, result, evaluated = floods_run
    output = tmp_path / "water.tif"
    summary = maps.map_scene(workdir, [test_rows_scene], output, **map_settings())
    assert summary["tiles"] == 4 and summary["settings"]["classes"] == ["no_water", "water"]

    with rasterio.open(output) as cog, rasterio.open(test_rows_scene) as scene:
        assert cog.crs == scene.crs and cog.transform == scene.transform
        assert cog.bounds == scene.bounds and cog.shape == scene.shape
        assert cog.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert cog.block_shapes == [(128, 128)] and cog.overviews(1) == [2, 4]
        assert cog.dtypes == ("uint8",) and cog.nodata == 255
        assert json.loads(cog.tags()["classes"]) == {"0": "no_water", "1": "water"}
        water = cog.read(1)
    np.testing.assert_array_equal(water, evaluated)  # no nodata: every test pixel has data

    trained = heads.load_head(workdir)
    _, test, _ = dense.load_scenes(config)
    score = trained.task.score([water.astype(np.int64)], [test[0].mask], trained.num_classes)
    assert score["miou_macro"] == pytest.approx(result["metrics"]["miou_macro"], abs=1e-12)

    with rasterio.open(tmp_path / "water.probabilities.tif") as cog:
        assert cog.descriptions == ("no_water", "water") and cog.count == 2
        assert cog.overviews(1) == [2, 4] and cog.crs == rasterio.open(output).crs
        probabilities = cog.read()
    np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-6)
    np.testing.assert_array_equal(probabilities.argmax(0), water)
    logits = xr.open_zarr(tmp_path / "water.logits.zarr")
    assert logits.attrs["complete"] is True and logits.rio.crs == rasterio.open(output).crs
    assert list(logits.feature.values) == ["no_water", "water"]


def test_a_killed_map_run_resumes_to_the_same_cogs(floods_run, test_rows_scene, tmp_path):
    workdir = floods_run[0]
    whole = tmp_path / "whole.tif"
    maps.map_scene(workdir, [test_rows_scene], whole, **map_settings())

    class Killed(Exception):
        pass

    def kill_after_two_tiles(report):
        if report["tiles"] == 2:
            raise Killed

    resumed = tmp_path / "resumed.tif"
    with pytest.raises(Killed):
        maps.map_scene(
            workdir, [test_rows_scene], resumed, progress=kill_after_two_tiles, **map_settings()
        )
    assert not resumed.exists()  # the maps are written once every tile is done
    summary = maps.map_scene(workdir, [test_rows_scene], resumed, **map_settings())
    assert summary["tiles"] == 2  # the two tiles not done before the kill
    for suffix in ("", ".probabilities"):
        with rasterio.open(tmp_path / f"whole{suffix}.tif") as a:
            with rasterio.open(tmp_path / f"resumed{suffix}.tif") as b:
                np.testing.assert_array_equal(a.read(), b.read())


def test_cli_maps_the_whole_chip_in_its_footprint(floods_run, shared_data, tmp_path, capsys):
    script = load_script(ROOT / "scripts/infer_scene.py")
    output = tmp_path / "chip_water.tif"
    args = [f"--head={floods_run[0]}", f"--input={shared_data / S2_CHIP}", f"--output={output}"]
    assert script.main([*args, "--tile=256"]) == 0
    assert "windows/s" in capsys.readouterr().out
    with rasterio.open(output) as cog, rasterio.open(shared_data / S2_CHIP) as chip:
        assert (cog.crs, cog.transform, cog.shape) == (chip.crs, chip.transform, chip.shape)
        assert cog.overviews(1) == []  # 512 px fit one 512 px block
        water = cog.read(1)
    assert set(np.unique(water)) <= {0, 1}
    summary = json.loads((tmp_path / "chip_water.summary.json").read_text())
    assert summary["tiles"] == 4 and summary["settings"]["window"] == 96

    with pytest.raises(SystemExit, match="--sensor cannot be given with --head"):
        script.main([*args, "--sensor=sentinel2_l1c"])
    with pytest.raises(SystemExit, match=r"reads 1 image\(s\) \['s2'\]; 2 input\(s\) given"):
        script.main([*args, f"--input={shared_data / S2_CHIP}"])
    with pytest.raises(SystemExit, match="the class map is a GeoTIFF"):
        script.main(
            [f"--head={floods_run[0]}", f"--input={shared_data / S2_CHIP}", "--output=x.zarr"]
        )


def test_change_pairs_must_share_the_pixel_grid(shared_data):
    spec = SensorSpec("landsat7_etm", ("B1", "B2", "B3", "B4", "B5", "B7"))
    pair_head = types.SimpleNamespace(
        keys=("before", "after"), specs={"before": spec, "after": spec}
    )
    folder = shared_data / "landsat_cd_taizhou_nanjing"
    taizhou = sorted((folder / "Taizhou").glob("*.tif"))
    nanjing = sorted((folder / "Nanjing").glob("*.tif"))
    bands = spec.bands
    cubes = maps.open_inputs(pair_head, taizhou, file_bands=bands)
    assert [c.spec for c in cubes] == [spec, spec]
    with pytest.raises(ValueError, match="not on the pixel grid of .*aizhou"):
        maps.open_inputs(pair_head, [taizhou[0], nanjing[0]], file_bands=bands)
