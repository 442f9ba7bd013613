"""Segmentation (Sen1Floods11) and change detection (Landsat) on the real samples, plus the
sliding-window, sampling and loss pieces checked by hand."""

import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from run_checks import must_not_run

from eofm.data import datasets
from eofm.data.spec import SensorSpec
from eofm.eval import dense, encoders, pixel_baselines, windows
from eofm.eval import fit as fit_lib
from eofm.infer import tiling
from eofm.train import validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shape", [(70, 50), (20, 33), (32, 32)])
def test_sliding_window_reassembles_the_scene(shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(*shape, 3)).astype(np.float32)
    calls = []

    def predict(batch):
        calls.append(batch["x"].shape)
        return batch["x"] * 2.0  # per-pixel: any overlap averages equal values

    out = windows.sliding_window(predict, {"x": image}, window=32, stride=16, num_classes=3)
    np.testing.assert_allclose(out, 2 * image, rtol=1e-6)
    assert all(c[1:3] == (32, 32) for c in calls)


def test_window_starts_cover_the_scene():
    assert tiling.starts(70, 32, 16) == [0, 16, 32, 38]
    assert tiling.starts(32, 32, 16) == [0]
    assert tiling.starts(20, 32, 16) == [0]  # padded to one window


def test_masked_cross_entropy_ignores_unlabelled_pixels():
    logits = jnp.asarray([[[[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]]]])  # [1, 1, 3, 2]
    mask = jnp.asarray([[[0, 1, -1]]])
    expected = (np.log1p(np.exp(-2.0)) + np.log(2.0)) / 2
    np.testing.assert_allclose(dense.masked_cross_entropy(logits, mask), expected, rtol=1e-6)
    assert float(dense.masked_cross_entropy(logits, jnp.full((1, 1, 3), -1))) == 0.0


def _window_batches(sampler, batch_size, process_index=0, process_count=1):
    return windows.training_dataset(
        sampler,
        batch_size=batch_size,
        seed=0,
        process_index=process_index,
        process_count=process_count,
    )


def test_training_windows_avoid_the_test_region(finetune_config):
    config = finetune_config("sen1floods11")
    train, test, names = dense.load_scenes(config)
    assert names == ["no_water", "water"] and len(train) == len(test) == 1
    assert test[0].mask.shape == (128, 512)
    np.testing.assert_array_equal(test[0].mask, train[0].mask[384:])
    norm = dense.Normalizers(train, "zscore")
    assert norm.sources == {"s2:sentinel2_l1c": "training pixels"}
    sampler = windows.TrainingWindows(
        [{"s2": norm(train[0], "s2")}], [train[0].mask], [train[0].held_out], size=64
    )
    assert sampler.corners[0][0].max() == 384 - 64  # no window reaches the held-out rows
    batches = _window_batches(sampler, 16)
    batch = batches[0]
    assert batch["s2"].shape == (16, 64, 64, 13) and batch["mask"].shape == (16, 64, 64)
    assert batch["mask"].dtype == np.int32
    assert (batch["mask"] >= 0).any(axis=(1, 2)).all()
    # Reproducible, a new draw per batch, and another one on each process.
    np.testing.assert_array_equal(_window_batches(sampler, 16)[0]["s2"], batch["s2"])
    assert not np.array_equal(batches[1]["s2"], batch["s2"])
    other = _window_batches(sampler, 16, process_index=1, process_count=2)[0]
    assert not np.array_equal(
        other["s2"], _window_batches(sampler, 16, process_index=0, process_count=2)[0]["s2"]
    )
    # Training-pixel statistics: the held-out rows are not in them.
    mean = np.nanmean(
        np.where(train[0].valid["s2"][:384], train[0].raw["s2"][:384], np.nan), (0, 1)
    )
    stats = norm.band_stats(train[0], "s2")
    np.testing.assert_allclose(
        [stats[b]["mean"] for b in train[0].specs["s2"].bands], mean, rtol=1e-4
    )


def _small(config, run):
    config.encoder = str(run)
    config.fit.update(total_steps=24, warmup_fraction=0.1, log_every=8, batch_size=8)
    config.head.channels = 16
    return config


def test_segmentation_end_to_end(small_smarties_run, tmp_path, finetune_config):
    config = _small(finetune_config("sen1floods11"), small_smarties_run)
    config.robustness.corruptions = ("rotate",)
    config.robustness.severities = (5,)
    result = dense.run(config, tmp_path)
    m = result["metrics"]
    assert set(m) >= {"miou_macro", "iou_micro", "oa", "mf1"}
    assert 0 <= m["miou_macro"] <= 1 and len(m["per_class_iou"]) == 2
    # The bottom quarter of the chip is scored: every labelled pixel there, nodata excluded.
    assert result["data"]["labelled_test_pixels"] == 128 * 512 - int(
        np.sum(dense.load_scenes(config)[1][0].mask < 0)
    )
    # The small encoder's default taps: 4 levels of stride 16, 64 wide.
    assert result["data"]["window"] == 48 and result["head"]["levels"] == [[16, 64]] * 4
    assert result["encoder"]["missing_bands"] == {}  # SMARTIES reads every band of the chip
    history = result["fit"]["history"]
    assert [h["step"] for h in history] == [8, 16, 24]
    assert result["fit"]["total_steps"] == 24 and (tmp_path / "fit" / "checkpoints" / "24").is_dir()
    assert set(result["robustness"]["cells"]) == {"rotate"}
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["metrics"] == m
    assert sorted(on_disk["plots"]) == ["overlays", "robustness"]
    assert (tmp_path / "overlays.png").read_bytes()[:4] == b"\x89PNG"
    assert "miou_macro" in (tmp_path / "report.md").read_text()
    _check_report_extras(result, tmp_path, config)
    assert result["data"]["split"].startswith(
        "spatial hold-out: the region (top 0.75, left 0, height 0.25, width 1) of every scene is"
        f" test (Spain_7370579, {result['data']['labelled_test_pixels']:,} labelled pixels)"
    )
    assert result["data"]["provenance"]["train+test"]["files"] == 3  # S1, S2, label
    assert {"all no_water", "all water"} < set(result["baselines"])
    assert "miou_macro_at_train_threshold" in m


def _check_report_extras(result, workdir, config):
    """Class weights, baselines, the F1-optimal threshold, split and provenance, in the JSON and
    in report.md."""
    train, test, names = dense.load_scenes(config)
    counts = dense.class_pixel_counts(train, len(names))
    weighting = result["fit"]["class_weights"]
    assert weighting["training_pixels"] == dict(zip(names, counts.tolist()))
    assert sum(counts) == result["data"]["labelled_train_pixels"]
    np.testing.assert_allclose(
        list(weighting["weights"].values()), dense.inverse_frequency_weights(counts)
    )
    (fitted,) = [name for name in result["baselines"] if name.startswith("threshold ")]
    assert fitted.endswith("from training pixels)")
    threshold = result["threshold"]
    assert 0 < threshold["value"] < 1 and 0 <= threshold["train_f1"] <= 1
    headline = result["headline_metric"]
    assert (
        result["metrics"][f"{headline}_at_train_threshold"] == threshold["test_metrics"][headline]
    )
    card = next(iter(result["data"]["provenance"].values()))
    assert card["files"] > 0 and len(card["files_sha256"]) == 64
    text = (workdir / "report.md").read_text()
    assert "## Baselines (same split)" in text and fitted in text
    assert f"**Split**: {result['data']['split']}" in text and "## Data" in text


def test_change_detection_end_to_end(small_smarties_run, tmp_path, finetune_config):
    config = _small(finetune_config("landsat_change"), small_smarties_run)
    config.head.update(kind="linear", fusion="concat")
    config.window_stride = 1.0  # windows side by side: Nanjing's 800 x 800 px map at less cost
    result = dense.run(config, tmp_path)
    m = result["metrics"]
    # Taizhou's sparse reference: 4,227 changed + 17,163 unchanged pixels are scored.
    assert m["num_labelled"] == 4227 + 17163
    _check_report_extras(result, tmp_path, config)
    assert result["data"]["split"] == (
        "train scenes Nanjing, 14,756 labelled pixels; test scenes Taizhou, 21,390 labelled"
        " pixels (whole scenes)"
    )
    # Calling every labelled pixel changed: precision = the changed share, recall 1.
    precision = 4227 / (4227 + 17163)
    everywhere = result["baselines"]["all positive"]["metrics"]
    assert everywhere["f1"] == pytest.approx(2 * precision / (1 + precision))
    assert result["baselines"]["all negative"]["metrics"]["f1"] == 0.0
    assert set(m) >= {"precision", "recall", "f1", "iou"}
    assert result["data"]["sensors"] == {
        "Nanjing": {"t1": "landsat5_tm", "t2": "landsat5_tm"},
        "Taizhou": {"t1": "landsat7_etm", "t2": "landsat7_etm"},
    }
    # Taizhou's sensor is not in training: its own pixels give the statistics.
    assert result["data"]["statistics"]["t2:landsat7_etm"] == "pixels of test scene Taizhou"
    assert result["robustness"] is None
    assert result["head"]["levels"] == [[16, 128]] * 4  # concat doubles the widths
    # A second run restores the trained head: no training step, the same metrics.
    again = dense.run(config, tmp_path)
    np.testing.assert_equal(again["metrics"], m)  # NaN precision when nothing is called changed
    assert again["fit"]["history"] == result["fit"]["history"]


def test_dense_errors_name_the_culprit(tmp_path, finetune_config):
    config = finetune_config("landsat_change")
    config.data.test_ids = ("Shanghai",)
    with pytest.raises(ValueError, match="Shanghai"):
        dense.run(config, tmp_path)
    config = finetune_config("landsat_change")
    config.data.inputs = ("t1",)
    with pytest.raises(ValueError, match="takes 2 image keys"):
        dense.run(config, tmp_path)
    config = finetune_config("landsat_change")
    config.head.fusion = "sum"
    with pytest.raises(ValueError, match="head.fusion 'sum'"):
        dense.run(config, tmp_path)


@pytest.mark.parametrize(
    "task, inputs", [("segmentation", ("t1",)), ("change_detection", ("t1", "t2"))]
)
def test_an_encoder_reading_none_of_the_bands_stops_before_training(
    task, inputs, tmp_path, finetune_config, monkeypatch
):
    """SpectralGPT needs 12 Sentinel-2 bands; Landsat's six stand in for six of them only: an error
    naming the encoder and both band sets before any head is trained (the robustness sweep never
    starts either)."""
    monkeypatch.chdir(ROOT)
    config = finetune_config("landsat_change")
    config.task, config.data.inputs = task, inputs
    config.encoder = "random:configs/pretrain/spectralgpt.py:tiny"
    config.robustness.corruptions = ("all",)
    monkeypatch.setattr(fit_lib, "fit", must_not_run)
    with pytest.raises(ValueError) as raised:
        dense.run(config, tmp_path)
    message = str(raised.value)
    assert config.encoder in message and "B8A" in message and "landsat5_tm" in message
    assert not (tmp_path / "report.json").exists()


def test_an_unwritable_workdir_stops_the_run_before_any_loading(
    tmp_path, finetune_config, monkeypatch
):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(dense, "load_split", must_not_run)
    monkeypatch.setattr(encoders, "load_encoder", must_not_run)
    with pytest.raises(validate.ConfigError, match=re.escape(str(blocker / "eval"))):
        dense.run(finetune_config("sen1floods11"), blocker / "eval")


def _scene(scene_id, sensor, value, shape=(40, 40)):
    spec = SensorSpec.full(sensor)
    c = len(spec.bands)
    raw = np.full((*shape, c), value, np.float32) + np.arange(shape[1])[None, :, None]
    return dense.Scene(
        scene_id,
        {"t2": raw},
        {"t2": np.ones(raw.shape, bool)},
        np.zeros(shape, np.int32),
        {"t2": spec},
        np.zeros(shape, bool),
    )


def test_unseen_sensor_scenes_use_their_own_statistics():
    norm = dense.Normalizers([_scene("train", "landsat5_tm", 10.0)], "zscore")
    a, b = _scene("A", "landsat7_etm", 50.0), _scene("B", "landsat7_etm", 90.0)
    mean = lambda s: norm.band_stats(s, "t2")["B1"]["mean"]
    assert (mean(a), mean(b)) == pytest.approx((50 + 19.5, 90 + 19.5))
    # Each scene is centred by its own statistics.
    np.testing.assert_allclose(norm(a, "t2").mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(norm(b, "t2").mean(), 0.0, atol=1e-5)
    assert norm.sources == {
        "t2:landsat5_tm": "training pixels",
        "t2:landsat7_etm": "pixels of test scene A, B",
    }


def test_window_corners_are_exactly_the_admissible_ones():
    scene = _scene("s", "landsat5_tm", 0.0, shape=(30, 20))
    scene.mask[:] = -1
    scene.mask[5, 5] = 1  # one labelled pixel
    scene.held_out[:, 15:] = True

    def sampler():
        image = {"t2": dense.Normalizers([scene], "zscore")(scene, "t2")}
        return windows.TrainingWindows([image], [scene.mask], [scene.held_out], 8)

    rows, cols = sampler().corners[0]
    # Windows of 8 px containing (5, 5) whose columns stay left of 15.
    expected = [(y, x) for y in range(23) for x in range(13) if y <= 5 < y + 8 and x <= 5 < x + 8]
    assert sorted(zip(rows.tolist(), cols.tolist())) == expected
    batch = _window_batches(sampler(), 4)[0]
    assert (batch["mask"] == 1).sum() == 4  # every window holds the labelled pixel
    scene.mask[5, 5] = -1
    with pytest.raises(ValueError, match="no 8 px training window"):
        sampler()


def _landsat_by_split(root, *, split, key1="t1", key2="t2"):
    """The Landsat change sites as a source with splits: "train" Nanjing, "test" Taizhou, "none"
    no site."""
    sites = {"train": ("Nanjing",), "test": ("Taizhou",), "none": ()}[split]
    if not sites:
        return []
    return datasets.landsat_change(root, sites=sites, key1=key1, key2=key2)


def test_train_and_test_scenes_from_two_builds_of_a_source(finetune_config, monkeypatch):
    monkeypatch.setitem(datasets.SOURCES, "landsat_by_split", _landsat_by_split)
    config = finetune_config("landsat_change")
    config.data.update(source="landsat_by_split", train_ids=(), test_ids=())
    config.data.update(train_split="train", test_split="test")
    split = dense.load_split(config)
    assert [s.id for s in split.train] == ["Nanjing"] and [s.id for s in split.test] == ["Taizhou"]
    assert split.class_names == ["unchanged", "changed"]
    assert split.description == (
        "train: the 'train' split (Nanjing, 14,756 labelled pixels); test: the 'test' split"
        " (Taizhou, 21,390 labelled pixels)"
    )
    assert sorted(split.sources) == ["test", "train"]
    config.data.test_root = "/elsewhere"
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        dense.load_split(config)
    config.data.update(test_root="", test_split="none")
    with pytest.raises(
        ValueError, match=r"'landsat_by_split' \(the 'none' split under .*\) has no"
    ):
        dense.load_split(config)
    config.data.update(test_split="test", test_ids=("Taizhou",))
    with pytest.raises(ValueError, match="leave data.train_ids, data.test_ids and test_region"):
        dense.load_split(config)


def test_change_overlays_show_both_dates_of_the_most_changed_tiles(finetune_config):
    config = finetune_config("landsat_change")
    _, test, _ = dense.load_scenes(config)
    task = dense.dense_task(config)
    preds = [np.zeros(s.mask.shape, np.int64) for s in test]
    overlay = dense._overlay(task, test, preds, 96, 3)
    assert overlay["before"].shape == overlay["images"].shape == (3, 96, 96, 3)
    changed = (overlay["truth"] == 1).sum(axis=(1, 2))
    mask = test[0].mask
    tiles = [
        (mask[y : y + 96, x : x + 96] == 1).sum()
        for y in dense.tiling.starts(400, 96, 96)
        for x in dense.tiling.starts(400, 96, 96)
    ]
    np.testing.assert_array_equal(changed, sorted(tiles, reverse=True)[:3])
    assert all(t.startswith("Taizhou\nrows ") for t in overlay["titles"])
    # A held-out region's tiles are titled by their position in the whole scene.
    floods = finetune_config("sen1floods11")
    _, test, _ = dense.load_scenes(floods)
    overlay = dense._overlay(dense.dense_task(floods), test, [test[0].mask.clip(0)], 128, 1)
    assert overlay["titles"][0].startswith("Spain_7370579\nrows 384-512")
    assert "before" not in overlay


def test_training_pixels_leave_out_the_test_region():
    scene = _scene("s", "landsat5_tm", 0.0, shape=(4, 4))
    scene.mask[0] = -1
    scene.held_out[3] = True
    assert pixel_baselines.training_pixels(scene).sum() == 8
    assert dense.class_pixel_counts([scene], 2).tolist() == [8, 0]
