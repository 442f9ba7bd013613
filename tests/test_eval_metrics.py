"""Tests of eofm.eval.metrics against hand-computed values on small arrays."""

import numpy as np
import pytest

from eofm.eval import metrics


def _assert_results_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(
            np.asarray(a[key], float), np.asarray(b[key], float), err_msg=key
        )


# Multiclass.


def test_multiclass_hand_computed():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 3, 1, 0, 2])
    out = metrics.multiclass_metrics(preds, labels, num_classes=4)
    # Correct: 2 of class 0, 1 of class 1, 1 of class 2 -> 4 / 6.
    assert out["oa"] == pytest.approx(4 / 6)
    # Recalls 2/3, 1/2, 1/1; class 3 is only predicted, never a reference -> NaN, excluded:
    # (2/3 + 1/2 + 1) / 3 = 13/18.
    np.testing.assert_allclose(out["per_class_recall"], [2 / 3, 1 / 2, 1.0, np.nan])
    assert out["balanced_accuracy"] == pytest.approx(13 / 18)
    assert out["confusion"] == [[2, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_multiclass_batches_equal_one_shot():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 5, 103), rng.integers(0, 5, 103)
    metric = metrics.MulticlassMetrics(5)
    for lo, hi in [(0, 10), (10, 11), (11, 60), (60, 103)]:
        metric.update(preds[lo:hi], labels[lo:hi])
    _assert_results_equal(metric.result(), metrics.multiclass_metrics(preds, labels, 5))


def test_multiclass_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="7"):
        metrics.multiclass_metrics(np.array([0, 1]), np.array([0, 7]), num_classes=3)
    with pytest.raises(ValueError, match="-2"):
        metrics.multiclass_metrics(np.array([-2, 1]), np.array([0, 1]), num_classes=3)


def test_multiclass_empty_is_nan():
    out = metrics.MulticlassMetrics(3).result()
    assert np.isnan(out["oa"]) and np.isnan(out["balanced_accuracy"])


# Multi-label.


def test_average_precision_ties():
    # Sorted: 0.9(+) | 0.5(+), 0.5(-) tied | 0.1(-). Thresholds 0.9: P=1, R=1/2; 0.5: P=2/3, R=1.
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6, not the 1.0 that ranking the tied positive first would give.
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    assert metrics.average_precision(scores, np.array([1, 1, 0, 0])) == pytest.approx(5 / 6)
    # The order of tied samples does not matter.
    assert metrics.average_precision(scores, np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # Without the tie the positive ranks second: AP = 1.
    assert metrics.average_precision(np.array([0.9, 0.6, 0.5, 0.1]), np.array([1, 1, 0, 0])) == 1.0
    assert np.isnan(metrics.average_precision(scores, np.zeros(4)))


SCORES = np.array(
    [
        [0.9, 0.2, 0.6],
        [0.6, 0.7, 0.1],
        [0.3, 0.4, 0.2],
        [0.1, 0.8, 0.4],
    ]
)
TARGETS = np.array(
    [
        [1, 0, 0],
        [0, 1, 0],
        [1, 0, 0],
        [0, 1, 0],
    ]
)


def test_multilabel_hand_computed():
    out = metrics.multilabel_metrics(SCORES, TARGETS)
    # Class 0: 0.9(+) 0.6(-) 0.3(+) 0.1(-): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6.
    # Class 1: 0.8(+) 0.7(+) 0.4(-) 0.2(-): AP = 1. Class 2 has no positive -> excluded.
    assert out["num_classes_evaluated"] == 2
    assert out["map_macro"] == pytest.approx((5 / 6 + 1) / 2)
    # Flattened, P = 4: 0.9+ 0.8+ 0.7+ | 0.6- 0.6- | 0.4- 0.4- | 0.3+ | 0.2- 0.2- | 0.1- 0.1-.
    # Recall 3/4 at precision 1, then recall 1 at precision 4/8: AP = 3/4 * 1 + 1/4 * 1/2 = 7/8.
    assert out["map_micro"] == pytest.approx(7 / 8)
    # Threshold 0.5 -> preds [[1,0,1], [1,1,0], [0,0,0], [0,1,0]].
    # Class 0: tp 1, fp 1, fn 1 -> F1 = 2 / 4; class 1: tp 2 -> F1 = 1;
    # class 2: tp 0, fp 1 -> F1 = 0 (defined: it has a positive prediction).
    assert out["f1_macro"] == pytest.approx((0.5 + 1 + 0) / 3)
    # Micro: tp 3, fp 2, fn 1 -> 6 / (6 + 2 + 1) = 2/3.
    assert out["f1_micro"] == pytest.approx(2 / 3)


def test_multilabel_threshold_is_inclusive():
    out = metrics.multilabel_metrics(np.array([[0.5], [0.49]]), np.array([[1], [0]]))
    assert out["f1_micro"] == 1.0


def test_multilabel_f1_macro_skips_undefined_classes():
    # Class 1 has neither a positive target nor a positive prediction: its F1 is 0/0 -> excluded.
    out = metrics.multilabel_metrics(np.array([[0.9, 0.1], [0.2, 0.3]]), np.array([[1, 0], [0, 0]]))
    assert out["f1_macro"] == 1.0
    assert out["num_classes_evaluated"] == 1


def test_multilabel_batches_equal_one_shot():
    rng = np.random.default_rng(1)
    scores = np.round(rng.uniform(size=(50, 6)), 1)  # Rounded to force ties across batches.
    targets = (rng.uniform(size=(50, 6)) < 0.3).astype(int)
    metric = metrics.MultilabelMetrics(6)
    for lo, hi in [(0, 7), (7, 30), (30, 50)]:
        metric.update(scores[lo:hi], targets[lo:hi])
    _assert_results_equal(metric.result(), metrics.multilabel_metrics(scores, targets))


def test_multilabel_rejects_bad_input():
    with pytest.raises(ValueError, match="2"):
        metrics.multilabel_metrics(np.zeros((2, 2)), np.array([[0, 2], [1, 0]]))
    with pytest.raises(ValueError, match="must be"):
        metrics.MultilabelMetrics(3).update(np.zeros((2, 2)), np.zeros((2, 2)))


# Segmentation.

SEG_LABELS = np.array([[[0, 0, 1, 1], [2, -1, -1, 0]]])
SEG_PRED = np.array([[[0, 1, 1, 1], [0, 2, 2, 0]]])


def test_segmentation_hand_computed():
    out = metrics.segmentation_metrics(SEG_PRED, SEG_LABELS, num_classes=3)
    # Valid (label, pred): (0,0) (0,1) (1,1) (1,1) (2,0) (0,0); the two -1 pixels predicted 2 are
    # ignored. Rows = label: [[2, 1, 0], [0, 2, 0], [1, 0, 0]].
    # tp = [2, 2, 0], fp = [1, 1, 0], fn = [1, 0, 1].
    # IoU = [2/4, 2/3, 0/1] -> miou_macro = (1/2 + 2/3 + 0) / 3 = 7/18.
    np.testing.assert_allclose(out["per_class_iou"], [0.5, 2 / 3, 0.0])
    assert out["miou_macro"] == pytest.approx(7 / 18)
    # Micro: sum tp / sum (tp + fp + fn) = 4 / (4 + 3 + 1) = 1/2.
    assert out["iou_micro"] == pytest.approx(0.5)
    assert out["oa"] == pytest.approx(4 / 6)
    # F1 = 2tp / (2tp + fp + fn) = [4/6, 4/5, 0] -> mf1 = (2/3 + 4/5) / 3 = 22/45.
    assert out["mf1"] == pytest.approx(22 / 45)


def test_segmentation_class_absent_from_both_is_excluded():
    out4 = metrics.segmentation_metrics(SEG_PRED, SEG_LABELS, num_classes=4)
    out3 = metrics.segmentation_metrics(SEG_PRED, SEG_LABELS, num_classes=3)
    assert np.isnan(out4["per_class_iou"][3])
    for key in ("miou_macro", "iou_micro", "oa", "mf1"):
        assert out4[key] == pytest.approx(out3[key])


def test_segmentation_class_only_predicted_counts():
    # Class 1 appears only in the predictions: IoU 0 / 1 = 0, included. (1/2 + 0) / 2 = 1/4.
    out = metrics.segmentation_metrics(np.array([[[0, 1]]]), np.array([[[0, 0]]]), num_classes=2)
    assert out["miou_macro"] == pytest.approx(0.25)


def test_segmentation_ignore_index():
    # Changing predictions at ignored pixels changes nothing.
    pred = SEG_PRED.copy()
    pred[SEG_LABELS == -1] = 0
    _assert_results_equal(
        metrics.segmentation_metrics(pred, SEG_LABELS, 3),
        metrics.segmentation_metrics(SEG_PRED, SEG_LABELS, 3),
    )
    # A custom ignore_index, e.g. 255.
    labels = np.where(SEG_LABELS == -1, 255, SEG_LABELS)
    _assert_results_equal(
        metrics.segmentation_metrics(SEG_PRED, labels, 3, ignore_index=255),
        metrics.segmentation_metrics(SEG_PRED, SEG_LABELS, 3),
    )
    with pytest.raises(ValueError, match="-1"):
        metrics.segmentation_metrics(SEG_PRED, SEG_LABELS, 3, ignore_index=None)


def test_segmentation_batches_equal_one_shot():
    rng = np.random.default_rng(2)
    labels = rng.integers(-1, 4, (5, 8, 8))
    preds = rng.integers(0, 4, (5, 8, 8))
    metric = metrics.SegmentationMetrics(4)
    for lo, hi in [(0, 2), (2, 3), (3, 5)]:
        metric.update(preds[lo:hi], labels[lo:hi])
    _assert_results_equal(metric.result(), metrics.segmentation_metrics(preds, labels, 4))


def test_segmentation_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="5"):
        metrics.segmentation_metrics(np.zeros((1, 1, 2), int), np.array([[[0, 5]]]), 3)


# Change detection.

CD_PRED = np.array([[[1, 1, 0, 0], [1, 0, 1, 0]]])
CD_CHANGED = np.array([[[1, 0, 1, 0], [0, 0, 0, 0]]], bool)
CD_UNCHANGED = np.array([[[0, 1, 0, 0], [1, 1, 0, 0]]], bool)


def test_change_hand_computed():
    out = metrics.change_metrics(CD_PRED, CD_CHANGED, CD_UNCHANGED)
    # Labelled pixels: (0,0) tp, (0,1) fp, (0,2) fn, (1,0) fp, (1,1) tn -> tp 1, fp 2, fn 1, tn 1.
    assert out["num_labelled"] == 5
    assert out["precision"] == pytest.approx(1 / 3)
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["f1"] == pytest.approx(2 / 5)  # 2 / (2 + 2 + 1).
    assert out["iou"] == pytest.approx(1 / 4)  # 1 / (1 + 2 + 1).
    assert out["oa"] == pytest.approx(2 / 5)  # (1 + 1) / 5.


def test_change_unlabelled_pixels_ignored():
    unlabelled = ~(CD_CHANGED | CD_UNCHANGED)
    flipped = np.where(unlabelled, 1 - CD_PRED, CD_PRED)
    _assert_results_equal(
        metrics.change_metrics(flipped, CD_CHANGED, CD_UNCHANGED),
        metrics.change_metrics(CD_PRED, CD_CHANGED, CD_UNCHANGED),
    )


def test_change_batches_equal_one_shot():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 2, (4, 6, 6))
    label = rng.integers(0, 3, (4, 6, 6))  # 0 unlabelled, 1 changed, 2 unchanged.
    metric = metrics.ChangeMetrics()
    for lo, hi in [(0, 1), (1, 4)]:
        metric.update(pred[lo:hi], label[lo:hi] == 1, label[lo:hi] == 2)
    _assert_results_equal(metric.result(), metrics.change_metrics(pred, label == 1, label == 2))


def test_change_zero_division_is_nan():
    # No predicted change: precision 0/0 -> NaN; recall 0/1 and F1 0/1 stay 0.
    changed, unchanged = CD_CHANGED[:, :1, :2], CD_UNCHANGED[:, :1, :2]  # One tp-able, one fp-able.
    out = metrics.change_metrics(np.zeros((1, 1, 2), int), changed, unchanged)
    assert np.isnan(out["precision"])
    assert out["recall"] == 0.0 and out["f1"] == 0.0
    empty = metrics.ChangeMetrics().result()
    assert empty["num_labelled"] == 0
    assert all(np.isnan(empty[k]) for k in ("precision", "recall", "f1", "iou", "oa"))


def test_change_rejects_doubly_labelled_pixels():
    with pytest.raises(ValueError, match="both changed and unchanged"):
        metrics.change_metrics(CD_PRED, CD_CHANGED, CD_CHANGED | CD_UNCHANGED)
    with pytest.raises(ValueError, match="2"):
        metrics.change_metrics(CD_PRED * 2, CD_CHANGED, CD_UNCHANGED)


def test_bootstrap_interval_brackets_the_accuracy():
    correct = np.r_[np.ones(60), np.zeros(40)]
    low, high = metrics.bootstrap_interval(lambda idx: correct[idx].mean(), 100, seed=0)
    # Normal approximation: 0.6 +- 1.96 * sqrt(0.6 * 0.4 / 100) = 0.504 .. 0.696.
    assert 0.48 < low < 0.53 and 0.67 < high < 0.72
    assert metrics.bootstrap_interval(lambda idx: correct[idx].mean(), 100, seed=0) == (low, high)
    nan = metrics.bootstrap_interval(lambda idx: float("nan"), 10)
    assert np.isnan(nan).all()
