"""Trivial classification baselines: majority, image statistics, and `baseline:image_stats`."""

import json
from pathlib import Path

import numpy as np
import pytest
from run_checks import must_not_run

from eofm.eval import baselines, classification, encoders, metrics
from eofm.eval import config as eval_config
from eofm.train import validate

ROOT = Path(__file__).resolve().parents[1]


def test_image_statistics_read_only_valid_pixels():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 100, (2, 4, 4, 3)).astype(np.float32)
    valid = np.ones_like(images, bool)
    valid[0, :2, :, 1] = False  # half of band 1 of image 0
    valid[1, :, :, 2] = False  # all of band 2 of image 1
    images[~valid] = 1e6  # must not count
    feats = baselines.image_statistics(images, valid)
    assert feats.shape == (2, 15)
    kept = images[0, 2:, :, 1].ravel()
    expected = [kept.mean(), kept.std(), *np.percentile(kept, baselines.PERCENTILES)]
    np.testing.assert_allclose(feats[0, 1::3], expected, rtol=1e-5)
    assert np.all(feats[1, 2::3] == 0)  # a band without valid pixels
    with_nan = np.where(valid, images, np.nan)
    np.testing.assert_array_equal(baselines.image_statistics(with_nan), feats)


def test_majority_single_label_scores_the_majority_share():
    train = np.array([0, 2, 2, 2, 1, 2])
    test = np.array([2, 0, 1, 2, 2, 0, 0, 0])
    scores = baselines.majority_scores(train, len(test), 4)
    assert scores.shape == (8, 4) and np.all(scores.argmax(1) == 2)
    assert metrics.multiclass_metrics(scores.argmax(1), test, 4)["oa"] == 3 / 8


def test_multilabel_majority_map_is_the_mean_prevalence():
    train = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [1, 0, 1, 0], [0, 1, 0, 0]], np.float32)
    test = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], np.float32)
    scores = baselines.majority_scores(train, len(test), 4)
    np.testing.assert_allclose(scores[0], [0.75, 0.5, 0.25, 0.25])
    got = metrics.multilabel_metrics(scores, test)
    # Class 3 has no positive in test; the others' AP is their prevalence: 2/4, 2/4, 1/4.
    assert got["map_macro"] == pytest.approx(np.mean([0.5, 0.5, 0.25]))
    # Predicted: classes 0 and 1 (in at least half the training images), for every image.
    tp, predicted, positives = 4, 8, 5
    assert got["f1_micro"] == pytest.approx(2 * tp / (predicted + positives))


def _bright_and_dark(n: int, seed: int) -> classification.LabelledImages:
    """Class 1 images bright, class 0 dark (values in DN), alternating."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.normal(100, 20, (n, 8, 8, 3)) + 900 * labels[:, None, None, None]
    return classification.LabelledImages(
        images.astype(np.float32), np.ones(images.shape, bool), labels
    )


def test_image_stats_probe_separates_bright_from_dark():
    config = eval_config.classification("linear")
    config.linear.steps = 30
    train, test = _bright_and_dark(24, seed=0), _bright_and_dark(9, seed=1)
    scored = classification.score_baselines(config, train, test, 2, multilabel=False)
    assert scored["image_stats probe"]["metrics"]["oa"] == 1.0
    assert scored["majority"]["metrics"]["oa"] == pytest.approx(5 / 9)  # class 0 (tie: first)
    assert set(scored["majority"]["metrics"]) >= {"oa", "balanced_accuracy", "oa_ci95"}
    assert "confusion" not in scored["majority"]["metrics"]


def test_image_stats_encoder_runs_knn_end_to_end(tmp_path, finetune_config, monkeypatch):
    monkeypatch.setattr(encoders, "load_encoder", must_not_run)
    config = finetune_config("eurosat_ms", "method=knn")
    config.encoder = "baseline:image_stats"
    report = classification.run(config, tmp_path)
    card = report["encoder"]
    assert (card["model"], card["variant"], card["ref"]) == (
        "baseline",
        "image_stats",
        config.encoder,
    )
    assert card["checkpoint_step"] is None and card["missing_bands"] == {}
    assert card["image_size"] == 64 and "[5 * C]" in card["feature_definition"]
    assert report["data"]["normalization"] == "none (raw)"
    assert report["data"]["interpolation"] == "none"
    assert report["metrics"]["oa"] > 0.5  # chance is 0.1
    markdown = (tmp_path / "report.md").read_text()
    assert "baseline:image_stats on eurosat_ms" in markdown and "none (raw)" in markdown
    assert json.loads((tmp_path / "report.json").read_text())["encoder"] == card


def test_image_stats_encoder_refuses_finetuning_and_dense_tasks(
    tmp_path, finetune_config, monkeypatch
):
    monkeypatch.setattr(classification, "load_splits", must_not_run)
    config = finetune_config("eurosat_ms", "method=finetune")
    config.encoder = "baseline:image_stats"
    with pytest.raises(validate.ConfigError, match="no weights to finetune") as raised:
        classification.run(config, tmp_path / "finetune")
    assert "\n" not in str(raised.value)
    # dense.run and embedding load their encoder with load_encoder, which refuses baselines.
    with pytest.raises(validate.ConfigError, match="serves classification"):
        encoders.load_encoder("baseline:image_stats")
    config.encoder, config.method = "baseline:mean_colour", "knn"
    with pytest.raises(validate.ConfigError, match="baseline:image_stats"):
        classification.run(config, tmp_path / "unknown")
    assert encoders.run_directory("baseline:image_stats") is None
