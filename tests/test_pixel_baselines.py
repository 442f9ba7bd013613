"""Per-pixel baselines, the threshold search and the class weights of the dense tasks, on tiny
arrays with known answers."""

import jax.numpy as jnp
import numpy as np
import pytest

from eofm.data.spec import SensorSpec
from eofm.eval import dense, metrics, pixel_baselines


def _scene(scene_id, images, mask, spec):
    return dense.Scene(
        scene_id,
        images,
        {k: np.ones(v.shape, bool) for k, v in images.items()},
        mask,
        {k: spec for k in images},
        np.zeros(mask.shape, bool),
    )


def _as_is(scene, key):
    return scene.raw[key]


def test_threshold_counts_match_a_direct_count():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # ties
    positive = rng.uniform(size=200) < 0.4
    thresholds, counts = metrics.binary_counts_by_threshold(scores, positive)
    assert len(thresholds) == 6  # 5 distinct scores: 6 cuts, all positive to all negative
    for j, t in enumerate(thresholds):
        pred = scores > t
        assert counts["tp"][j] == np.sum(pred & positive)
        assert counts["fp"][j] == np.sum(pred & ~positive)
        assert counts["fn"][j] == np.sum(~pred & positive)
        assert counts["tn"][j] == np.sum(~pred & ~positive)
    scored = metrics.binary_scores(counts)
    expected = metrics.segmentation_metrics((scores > thresholds[2])[None], positive[None], 2)
    assert scored["miou_macro"][2] == pytest.approx(expected["miou_macro"])


@pytest.mark.parametrize("metric", ["f1", "miou_macro"])
def test_best_threshold_recovers_the_direction_and_value(metric):
    scores = np.linspace(0.0, 1.0, 101)
    positive = scores < 0.305  # class 1 below 0.3
    found = pixel_baselines.best_threshold(scores, positive, metric)
    assert not found.above and found.train_score == 1.0
    assert 0.30 < found.value < 0.31
    np.testing.assert_array_equal(found.apply(scores), positive)
    above = pixel_baselines.best_threshold(-scores, positive, metric)
    assert above.above and -0.31 < above.value < -0.30
    # One direction only (the F1-optimal probability threshold): the best "above" cut.
    one_way = pixel_baselines.best_threshold(scores, positive, "f1", both_directions=False)
    assert one_way.above and one_way.train_score < 1.0


def test_change_baselines_all_positive_and_magnitude():
    rng = np.random.default_rng(1)
    spec = SensorSpec("landsat5_tm", ("B1", "B2", "B3"))
    mask = rng.choice([-1, 0, 1], size=(40, 30), p=[0.5, 0.35, 0.15]).astype(np.int32)
    before = rng.normal(size=(40, 30, 3)).astype(np.float32)
    after = before + 0.1 * rng.normal(size=before.shape).astype(np.float32)
    after[mask == 1] += 3.0  # changed pixels move far
    scene = _scene("s", {"t1": before, "t2": after}, mask, spec)
    task = dense.ChangeDetection(("t1", "t2"))
    out = pixel_baselines.change_baselines(task, [scene], [scene], _as_is)
    precision = np.sum(mask == 1) / np.sum(mask >= 0)
    assert out["all positive"]["metrics"]["f1"] == pytest.approx(2 * precision / (1 + precision))
    assert out["all positive"]["metrics"]["recall"] == 1.0
    assert out["all negative"]["metrics"]["f1"] == 0.0
    (name,) = [n for n in out if n.startswith("threshold change magnitude (t=")]
    assert out[name]["metrics"]["f1"] == 1.0 and out[name]["threshold"]["above"]
    assert "from training pixels" in name


def test_segmentation_baselines_pick_the_index_that_separates():
    rng = np.random.default_rng(2)
    spec = SensorSpec("sentinel2_l1c", ("B03", "B08"))
    water = rng.uniform(size=(32, 32)) < 0.3
    brightness = rng.uniform(500, 5000, size=(32, 32))
    green = np.where(water, 1.2, 0.8) * brightness
    nir = np.where(water, 0.5, 1.5) * brightness
    image = np.stack([green, nir], -1).astype(np.float32)
    mask = water.astype(np.int32)
    scene = _scene("chip", {"s2": image}, mask, spec)
    task = dense.Segmentation(("s2",))
    out = pixel_baselines.segmentation_baselines(
        task, [scene], [scene], _as_is, ["no_water", "water"]
    )
    p = water.mean()
    # All water: IoU of water p, of no_water 0 (in the reference, never predicted).
    assert out["all water"]["metrics"]["miou_macro"] == pytest.approx(p / 2)
    assert out["all no_water"]["metrics"]["miou_macro"] == pytest.approx((1 - p) / 2)
    (name,) = [n for n in out if n.startswith("threshold ")]
    assert name.startswith("threshold NDWI (t=") and out[name]["metrics"]["miou_macro"] == 1.0
    # The three-class task has constant maps only.
    three = pixel_baselines.segmentation_baselines(task, [scene], [scene], _as_is, ["a", "b", "c"])
    assert sorted(three) == ["all a", "all b", "all c"]


def test_normalized_differences_follow_the_registry_names():
    s2 = SensorSpec("sentinel2_l1c", ("B03", "B04", "B08", "B11"))
    scores = pixel_baselines.segmentation_scores("x", s2, _as_is)
    assert {"NDWI", "MNDWI", "NDVI"} <= set(scores)
    tm = SensorSpec("landsat5_tm", ("B2", "B4"))  # green, nir
    assert [n for n in pixel_baselines.segmentation_scores("x", tm, _as_is) if "band" not in n] == [
        "NDWI"
    ]
    image = np.asarray([[[30.0, 10.0], [0.0, 0.0]]], np.float32)  # [1, 2, 2]
    scene = _scene("s", {"x": image}, np.zeros((1, 2), np.int32), tm)
    ndwi = pixel_baselines.normalized_difference("x", "green", "nir")(scene)
    np.testing.assert_allclose(ndwi, [[0.5, 0.0]])  # 0 where green + nir is 0


def test_inverse_frequency_weights_and_their_warning():
    weights = dense.inverse_frequency_weights(np.asarray([30, 10, 0]))
    np.testing.assert_allclose(weights, [40 / 90, 40 / 30, 0.0])
    out = dense.class_weights("inverse_frequency", np.asarray([30, 10, 0]), ["a", "b", "c"])
    assert out["training_pixels"] == {"a": 30, "b": 10, "c": 0}
    assert out["warning"] == "no training pixel of class c: weight 0"
    assert dense.class_weights((1.0, 2.0), np.asarray([3, 4]), ["a", "b"])["weights"] == {
        "a": 1.0,
        "b": 2.0,
    }
    with pytest.raises(ValueError, match="2 non-negative floats"):
        dense.class_weights((1.0,), np.asarray([3, 4]), ["a", "b"])
    with pytest.raises(ValueError, match="'inverse'"):
        dense.class_weights("inverse", np.asarray([3, 4]), ["a", "b"])


def test_weighted_cross_entropy_is_a_weighted_mean_over_labelled_pixels():
    logits = jnp.asarray([[[[2.0, 0.0], [0.0, 0.0], [5.0, -5.0]]]])  # [1, 1, 3, 2]
    mask = jnp.asarray([[[0, 1, -1]]])
    ce0, ce1 = np.log1p(np.exp(-2.0)), np.log(2.0)
    expected = (0.5 * ce0 + 3.0 * ce1) / 3.5
    got = dense.masked_cross_entropy(logits, mask, jnp.asarray([0.5, 3.0]))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    zero = dense.masked_cross_entropy(logits, mask, jnp.asarray([0.0, 0.0]))
    assert float(zero) == 0.0
