"""The grain pipeline: determinism, exact resume, process sharding, normalisation, augmentation,
and worker processes that leave no shared memory behind."""

import os
import subprocess
import sys

import numpy as np
import pytest

from eofm.data import arrayrecord, augment, datasets, normalize, pipeline, stats
from eofm.data.spec import SensorSpec


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The vendored BigEarthNet pairs as ArrayRecord, with their statistics."""
    directory = tmp_path_factory.mktemp("ben")
    arrayrecord.prepare(datasets.BigEarthNetSource(), directory, examples_per_shard=8)
    source = arrayrecord.ArrayRecordSource(directory)
    return source, stats.read_stats_json(source.stats_path)


def _transforms(source, band_stats):
    return [
        normalize.Normalize(source.specs, {"s2": "zscore", "s1": "percentile_clip"}, band_stats),
        augment.RandomCropFlipRotate(["s2", "s1"], size=64, scale=(0.3, 1.0)),
    ]


def _dataset(source, band_stats, seed=0, **kw):
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return pipeline.make_dataset(
        source, batch_size=4, seed=seed, transforms=_transforms(source, band_stats), **kw
    )


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_have_the_expected_layout(prepared):
    source, band_stats = prepared
    batch = next(pipeline.make_iterator(_dataset(source, band_stats)))
    assert batch["s2"].shape == (4, 64, 64, 12) and batch["s2"].dtype == np.float32
    assert batch["s1"].shape == (4, 64, 64, 2) and batch["s1_valid"].dtype == bool
    assert batch["label"].shape == (4, 19)
    assert np.isfinite(batch["s2"]).all()
    assert 0 <= batch["s1"].min() and batch["s1"].max() <= 1  # percentile_clip range


def test_same_seed_same_batches_other_seed_other_batches(prepared):
    source, band_stats = prepared
    a = _take(pipeline.make_iterator(_dataset(source, band_stats, seed=3)), 3)
    b = _take(pipeline.make_iterator(_dataset(source, band_stats, seed=3)), 3)
    c = _take(pipeline.make_iterator(_dataset(source, band_stats, seed=4)), 3)
    _assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["s2"], c[0]["s2"])


def test_resumed_iterator_reproduces_the_remaining_batches(prepared):
    source, band_stats = prepared
    # 24 examples, batch 4: 6 batches per epoch; run across an epoch boundary.
    full = _take(pipeline.make_iterator(_dataset(source, band_stats)), 10)
    it = pipeline.make_iterator(_dataset(source, band_stats))
    _take(it, 4)
    state = it.get_state()
    resumed = pipeline.make_iterator(_dataset(source, band_stats))
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 6), full[4:])


def test_resume_with_worker_processes(prepared):
    source, band_stats = prepared
    ds = _dataset(source, band_stats)
    full = _take(pipeline.make_iterator(ds), 5)
    it = pipeline.make_iterator(ds, num_workers=2)
    head = _take(it, 2)
    state = it.get_state()
    del it
    resumed = pipeline.make_iterator(ds, num_workers=2)
    resumed.set_state(state)
    _assert_batches_equal(head + _take(resumed, 3), full)


def test_two_processes_cover_every_example_once(prepared):
    source, _ = prepared
    ids = []
    for process_index in range(2):
        ds = pipeline.make_dataset(
            source, batch_size=1, seed=0, num_epochs=1, process_index=process_index, process_count=2
        )
        ids.append([str(b["id"][0]) for b in ds])
    assert len(ids[0]) == len(ids[1]) == 12
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(source[i]["id"] for i in range(len(source)))


def test_epochs_are_reshuffled(prepared):
    source, _ = prepared
    ds = pipeline.make_dataset(
        source, batch_size=1, seed=0, num_epochs=2, process_index=0, process_count=1
    )
    ids = [str(b["id"][0]) for b in ds]
    assert sorted(ids[:24]) == sorted(ids[24:]) and ids[:24] != ids[24:]


def test_zscore_normalises_the_dataset(prepared):
    """After z-score with the dataset's statistics, every band has mean 0 and std 1."""
    source, band_stats = prepared
    norm = normalize.Normalize(source.specs, "zscore", band_stats)
    samples = [norm.map(source[i]) for i in range(len(source))]
    for key in ("s2", "s1"):
        x = np.stack([s[key] for s in samples]).reshape(-1, len(source.specs[key].bands))
        valid = np.stack([s[key + "_valid"] for s in samples]).reshape(x.shape)
        for c in range(x.shape[1]):
            values = x[valid[:, c], c].astype(np.float64)
            assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-4


def test_normalisation_methods():
    spec = {"img": SensorSpec("sentinel1_grd", ("VV", "VH"))}
    band_stats = {
        "img": {
            "sensor": "sentinel1_grd",
            "bands": ["VH", "VV"],
            "stats": {
                "VV": {"mean": -10.0, "std": 2.0, "p1": -20.0, "p99": 0.0},
                "VH": {"mean": -16.0, "std": 4.0, "p1": -30.0, "p99": -10.0},
            },
        }
    }
    x = np.array([[[-10.0, -16.0], [-25.0, 0.0]]], np.float32)  # [1, 2, 2]: VV, VH channels
    sample = {"img": x, "img_valid": np.ones_like(x, bool)}

    def run(method):
        return normalize.Normalize(spec, method, band_stats).map(sample)["img"]

    np.testing.assert_allclose(run("zscore"), [[[0, 0], [-7.5, 4]]])
    np.testing.assert_allclose(run("percentile_clip"), [[[0.5, 0.7], [0, 1]]])
    np.testing.assert_allclose(run("mean2std_clip"), [[[0.5, 0.5], [0, 1]]])
    np.testing.assert_allclose(run("minmax_per_image"), [[[1, 0], [0, 1]]], atol=1e-6)


def test_normalise_refuses_mismatched_statistics():
    spec = {"s2": SensorSpec("sentinel2_l2a", ("B02", "B03"))}
    other = {
        "s2": {
            "sensor": "sentinel2_l1c",
            "bands": ["B02", "B03"],
            "stats": {"B02": {"mean": 1, "std": 1}, "B03": {"mean": 1, "std": 1}},
        }
    }
    with pytest.raises(ValueError, match="for sensor sentinel2_l1c, but the data is sentinel2_l2a"):
        normalize.Normalize(spec, "zscore", other)
    partial = {
        "s2": {"sensor": "sentinel2_l2a", "bands": ["B02"], "stats": {"B02": {"mean": 1, "std": 1}}}
    }
    with pytest.raises(ValueError, match=r"lack bands \['B03'\]"):
        normalize.Normalize(spec, "zscore", partial)
    with pytest.raises(ValueError, match="no statistics for 's2'"):
        normalize.Normalize(spec, "zscore", {})
    with pytest.raises(ValueError, match="unknown normalisation 'z-score'"):
        normalize.Normalize(spec, "z-score", partial)


def test_augmentation_moves_images_and_masks_together():
    """Channel 0 holds the row and channel 1 the column of each pixel; a label mask holds the same
    coordinates at half the resolution. After any crop/flip/rotation, they must still agree."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    image = np.stack([rows, cols], -1).astype(np.float32) + 0.5  # pixel centres
    coarse = image[::2, ::2] // 2 * 2 + 1.0  # centres of 2x2 blocks, at 16 x 16
    sample = {"img": image, "img_valid": np.ones_like(image, bool), "mask": coarse.astype(np.int32)}
    aug = augment.RandomCropFlipRotate(["img"], size=16, mask_keys=["mask"], scale=(0.25, 1.0))
    for seed in range(20):
        out = aug.random_map(sample, np.random.default_rng(seed))
        assert out["img"].shape == (16, 16, 2) and out["mask"].shape == (8, 8, 2)
        assert out["mask"].dtype == np.int32 and out["img_valid"].dtype == bool
        # Each coarse pixel's coordinates agree with the mean of the 2x2 image pixels it covers.
        fine = out["img"].reshape(8, 2, 8, 2, 2).mean(axis=(1, 3))
        np.testing.assert_allclose(fine, out["mask"], atol=2.01)
    # Without cropping, a flip/rotation is an exact permutation of the pixels.
    exact = augment.RandomCropFlipRotate(["img"], size=32, mask_keys=["mask"])
    out = exact.random_map(sample, np.random.default_rng(1))
    assert sorted(map(tuple, out["img"].reshape(-1, 2))) == sorted(map(tuple, image.reshape(-1, 2)))


# Two batches from a worker process placed on the device as the training loop does: on CPU the JAX
# arrays alias the host batches and live until the interpreter exits.
_BATCHES_ON_DEVICE = """
import sys

import jax
from absl import flags

from eofm.data import arrayrecord, pipeline


def batches_on_device(directory):
    source = arrayrecord.ArrayRecordSource(directory)
    ds = pipeline.make_dataset(source, batch_size=4, seed=0, process_index=0, process_count=1)
    it = pipeline.make_iterator(ds, num_workers=1)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    batches = [jax.make_array_from_process_local_data(sharding, next(it)["s2"]) for _ in "ab"]
    it.close()
    return batches


if __name__ == "__main__":
    flags.FLAGS.mark_as_parsed()
    kept = batches_on_device(sys.argv[1])
    print(float(sum(x.sum() for x in kept)))
"""


def test_worker_batches_leave_no_shared_memory_behind(prepared, tmp_path):
    source, _ = prepared
    script = tmp_path / "batches_on_device.py"
    script.write_text(_BATCHES_ON_DEVICE)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    result = subprocess.run(
        [sys.executable, str(script), str(source.directory)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout) > 0
    assert "leaked shared_memory" not in result.stderr, result.stderr[-3000:]
