"""kNN probe: hand-built cases and image-statistics features on the real EuroSAT-MS sample."""

import numpy as np
import pytest

from eofm.eval import knn, metrics


def test_hand_built_votes():
    bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    labels = np.array([0, 0, 1, 1, 1])
    queries = np.array([[1.0, 0.05], [0.05, 1.0], [0.7, 0.7]])
    pred, scores = knn.knn_predict(bank, labels, queries, num_classes=2, k=1, metric="euclidean")
    np.testing.assert_array_equal(pred, [0, 1, 1])  # [0.7, 0.7] is nearest to [0.2, 0.8]
    pred, scores = knn.knn_predict(bank, labels, queries, num_classes=2, k=5, metric="euclidean")
    np.testing.assert_array_equal(scores, [[2, 3]] * 3)  # all five vote: majority class 1
    # Cosine with a sharp temperature: the nearest neighbours dominate the vote.
    pred, _ = knn.knn_predict(bank, labels, queries[:2], num_classes=2, k=5, temperature=0.01)
    np.testing.assert_array_equal(pred, [0, 1])
    with pytest.raises(ValueError, match="unknown kNN metric"):
        knn.knn_predict(bank, labels, queries, num_classes=2, metric="manhattan")
    with pytest.raises(ValueError, match="k=9"):
        knn.knn_predict(bank, labels, queries, num_classes=2, k=9)


def test_image_statistics_baseline_on_eurosat(eurosat_image_statistics):
    """Per-band mean / std / min / max per image (the training-free "imagestats" baseline of
    Corley et al.) separate EuroSAT classes far above chance."""
    feats, labels = eurosat_image_statistics
    feats = (feats - feats.mean(0)) / feats.std(0)
    test = np.arange(len(labels)) % 3 == 0
    pred, _ = knn.knn_predict(
        feats[~test], labels[~test], feats[test], num_classes=10, k=5, metric="euclidean"
    )
    result = metrics.multiclass_metrics(pred, labels[test], 10)
    assert result["oa"] > 0.6, result["oa"]  # chance is 0.1


def test_multilabel_scores_are_weighted_label_frequencies():
    bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0]], np.float32)
    _, scores = knn.knn_predict(
        bank, labels, np.array([[1.0, 0.02]]), num_classes=3, k=2, metric="euclidean"
    )
    np.testing.assert_allclose(scores, [[1.0, 0.5, 0.5]])  # two neighbours, equal weights
    _, scores = knn.knn_predict(
        bank, labels, np.array([[1.0, 0.0]]), num_classes=3, k=2, temperature=0.1
    )
    w = np.exp(np.array([1.0, 0.9 / np.hypot(0.9, 0.1)]) / 0.1)
    np.testing.assert_allclose(scores, [[1.0, w[1] / w.sum(), w[0] / w.sum()]], rtol=1e-5)
