"""Linear probe: separable data, decay selection, multi-label, and real EuroSAT image statistics."""

import numpy as np

from eofm.eval import classification, knn, linear, metrics


def test_separable_classes_and_decay_choice():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5)) * 4
    labels = np.repeat(np.arange(3), 40)
    x = centers[labels] + rng.normal(size=(120, 5))
    idx = rng.permutation(120)
    tr, va, te = idx[:60], idx[60:90], idx[90:]
    fit = linear.fit_linear_probe(x[tr], labels[tr], x[va], labels[va], num_outputs=3)
    assert np.mean(fit.logits(x[te]).argmax(1) == labels[te]) > 0.95
    assert fit.weight_decay in fit.validation_scores
    assert max(fit.validation_scores.values()) == fit.validation_scores[fit.weight_decay]
    # An absurd decay shrinks the weights to ~0; the validation split rejects it.
    assert fit.validation_scores[10.0] <= fit.validation_scores[fit.weight_decay]


def test_multilabel_probe():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6))
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0], axis=1).astype(np.float32)
    fit = linear.fit_linear_probe(
        x[:100], y[:100], x[100:150], y[100:150], num_outputs=2, multilabel=True
    )
    pred = fit.logits(x[150:]) > 0
    assert np.mean(pred == (y[150:] > 0)) > 0.9


def test_linear_probe_beats_knn_floor_on_eurosat_image_statistics(eurosat_image_statistics):
    feats, labels = eurosat_image_statistics
    rest, test = classification.stratified_split(labels, 1 / 3, seed=0)
    train_i, val_i = classification.stratified_split(labels[rest], 1 / 4, seed=1)
    train, val = rest[train_i], rest[val_i]
    fit = linear.fit_linear_probe(
        feats[train], labels[train], feats[val], labels[val], num_outputs=10
    )
    oa = metrics.multiclass_metrics(fit.logits(feats[test]).argmax(1), labels[test], 10)["oa"]
    z = (feats - feats[rest].mean(0)) / feats[rest].std(0)
    knn_pred, _ = knn.knn_predict(
        z[rest], labels[rest], z[test], num_classes=10, k=5, metric="euclidean"
    )
    knn_oa = metrics.multiclass_metrics(knn_pred, labels[test], 10)["oa"]
    assert oa > 0.6 and oa >= knn_oa - 0.05, (oa, knn_oa)
