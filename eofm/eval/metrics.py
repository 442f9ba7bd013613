"""Host-side evaluation metrics in numpy, accumulated over batches.

Every metric is a small class with `update(...)` (called once per batch) and `result()`, plus a
one-shot function over whole arrays. Macro and micro averages carry explicit names, because the
benchmarks disagree on what "accuracy" and "IoU" mean:

    oa                 overall (micro) accuracy: correct / total.
    balanced_accuracy  macro recall over the classes present in the references.
    miou_macro         mean per-class IoU over the classes present in the references OR predictions.
    iou_micro          sum over classes of intersections / sum over classes of unions.
    map_macro          mean average precision over the classes with at least one positive.
    map_micro          average precision of all (sample, class) scores flattened together.

Zero division: a ratio whose denominator is 0 (e.g. the recall of a class that never occurs) is
NaN, never 0.0. Per-class NaNs are left out of macro means; a mean over no defined values, and any
metric over no samples, is NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den elementwise, NaN where den == 0."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    """Mean of the non-NaN entries of x; NaN if there are none."""
    x = np.asarray(x, np.float64)
    valid = ~np.isnan(x)
    return float(x[valid].mean()) if valid.any() else float("nan")


def _check_range(name: str, x: np.ndarray, num_classes: int) -> None:
    """Raises ValueError naming the first value of x outside [0, num_classes)."""
    bad = (x < 0) | (x >= num_classes)
    if bad.any():
        raise ValueError(
            f"{name} value {x[bad][0]} is outside [0, {num_classes}) (num_classes={num_classes})."
        )


def _as_int(name: str, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise ValueError(f"{name} must hold integer labels, got dtype {x.dtype}.")
    return x.astype(np.int64)


def _check_shapes(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} shape {a.shape} != {b_name} shape {b.shape}.")


def _confusion(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, K] counts with rows = reference class, columns = predicted class."""
    flat = labels.ravel() * num_classes + preds.ravel()
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def _confusion_stats(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (tp, fp, fn) of a [K, K] confusion matrix."""
    tp = np.diag(cm).astype(np.float64)
    return tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the precision-recall step curve, with tied scores forming one threshold.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds in decreasing order, which is
    sklearn's `average_precision_score`; samples with equal scores enter the curve together, so
    their input order does not matter.

    Args:
        scores: [N] float scores, higher means more likely positive.
        targets: [N] {0, 1}.

    Returns:
        The AP, or NaN if there is no positive target.
    """
    scores = np.asarray(scores, np.float64).ravel()
    targets = np.asarray(targets).ravel().astype(np.float64)
    if targets.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, targets = scores[order], targets[order]
    # Last index of every run of equal scores: one point of the curve per distinct threshold.
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(targets)[last]
    fps = last + 1 - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


class MulticlassMetrics:
    """Single-label classification: confusion matrix, OA and balanced accuracy."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred_labels: np.ndarray, labels: np.ndarray) -> None:
        """Adds a batch of [N] predicted and [N] reference class indices."""
        pred_labels = _as_int("pred_labels", pred_labels)
        labels = _as_int("labels", labels)
        _check_shapes("pred_labels", pred_labels, "labels", labels)
        _check_range("labels", labels, self.num_classes)
        _check_range("pred_labels", pred_labels, self.num_classes)
        self.confusion += _confusion(labels, pred_labels, self.num_classes)

    def result(self) -> dict[str, Any]:
        """oa, balanced_accuracy, per_class_recall ([K], NaN if absent) and confusion ([K][K])."""
        cm = self.confusion
        tp, _, fn = _confusion_stats(cm)
        recall = _ratio(tp, tp + fn)
        return {
            "oa": float(_ratio(tp.sum(), cm.sum())),
            "balanced_accuracy": _nanmean(recall),
            "per_class_recall": recall.tolist(),
            "confusion": cm.tolist(),
        }


def multiclass_metrics(pred_labels: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """One-shot `MulticlassMetrics` over [N] predictions and [N] references."""
    metric = MulticlassMetrics(num_classes)
    metric.update(pred_labels, labels)
    return metric.result()


class MultilabelMetrics:
    """Multi-label classification: macro and micro mAP, micro and macro F1.

    Scores are probabilities (e.g. sigmoid outputs); for F1 a class is predicted positive when its
    score is >= `threshold` (0.5). Average precision needs every score, so they are kept in memory.
    """

    def __init__(self, num_classes: int, threshold: float = 0.5):
        self.num_classes = num_classes
        self.threshold = threshold
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, scores: np.ndarray, targets: np.ndarray) -> None:
        """Adds [N, K] float scores and [N, K] {0, 1} targets."""
        scores = np.asarray(scores, np.float64)
        targets = np.asarray(targets)
        _check_shapes("scores", scores, "targets", targets)
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(f"scores must be [N, {self.num_classes}], got {scores.shape}.")
        if np.isnan(scores).any():
            raise ValueError("scores contain NaN.")
        bad = (targets != 0) & (targets != 1)
        if bad.any():
            raise ValueError(f"targets value {targets[bad][0]} is not 0 or 1.")
        self._scores.append(scores)
        self._targets.append(targets.astype(np.int64))

    def result(self) -> dict[str, float]:
        """map_macro, map_micro, f1_micro, f1_macro and num_classes_evaluated.

        map_macro averages the classes with at least one positive target (their number is
        num_classes_evaluated). f1_macro averages the classes whose F1 is defined, i.e. with a
        positive target or a positive prediction.
        """
        k = self.num_classes
        scores = np.concatenate(self._scores) if self._scores else np.zeros((0, k))
        targets = np.concatenate(self._targets) if self._targets else np.zeros((0, k), np.int64)
        ap = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(k)])
        preds = scores >= self.threshold
        positive = targets == 1
        tp = (preds & positive).sum(axis=0)
        fp = (preds & ~positive).sum(axis=0)
        fn = (~preds & positive).sum(axis=0)
        return {
            "map_macro": _nanmean(ap),
            "map_micro": average_precision(scores, targets),
            "f1_micro": float(_ratio(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
            "f1_macro": _nanmean(_ratio(2 * tp, 2 * tp + fp + fn)),
            "num_classes_evaluated": int(np.sum(~np.isnan(ap))),
        }


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> dict:
    """One-shot `MultilabelMetrics` over [N, K] scores and [N, K] {0, 1} targets."""
    metric = MultilabelMetrics(np.shape(scores)[-1], threshold)
    metric.update(scores, targets)
    return metric.result()


class SegmentationMetrics:
    """Semantic segmentation: per-class IoU, macro mIoU, micro IoU, OA and macro F1.

    Reference pixels equal to `ignore_index` (nodata) are excluded, whatever is predicted there.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = -1):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, labels: np.ndarray) -> None:
        """Adds [N, H, W] predicted and [N, H, W] reference class indices."""
        pred = _as_int("pred", pred)
        labels = _as_int("labels", labels)
        _check_shapes("pred", pred, "labels", labels)
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            pred, labels = pred[keep], labels[keep]
        _check_range("labels", labels, self.num_classes)
        _check_range("pred", pred, self.num_classes)
        self.confusion += _confusion(labels, pred, self.num_classes)

    def result(self) -> dict[str, Any]:
        """miou_macro, iou_micro, per_class_iou ([K]), oa and mf1.

        A class's IoU and F1 are NaN when it appears in neither the references nor the predictions;
        miou_macro and mf1 average the other classes.
        """
        cm = self.confusion
        tp, fp, fn = _confusion_stats(cm)
        iou = _ratio(tp, tp + fp + fn)
        return {
            "miou_macro": _nanmean(iou),
            "iou_micro": float(_ratio(tp.sum(), (tp + fp + fn).sum())),
            "per_class_iou": iou.tolist(),
            "oa": float(_ratio(tp.sum(), cm.sum())),
            "mf1": _nanmean(_ratio(2 * tp, 2 * tp + fp + fn)),
        }


def segmentation_metrics(
    pred: np.ndarray, labels: np.ndarray, num_classes: int, ignore_index: int | None = -1
) -> dict:
    """One-shot `SegmentationMetrics` over [N, H, W] predictions and references."""
    metric = SegmentationMetrics(num_classes, ignore_index)
    metric.update(pred, labels)
    return metric.result()


class ChangeMetrics:
    """Binary change detection against sparse references; scores the change class.

    Only labelled pixels (marked changed or unchanged) count; predictions elsewhere are ignored.
    """

    def __init__(self):
        self.tp = self.fp = self.fn = self.tn = 0

    def update(self, pred: np.ndarray, changed: np.ndarray, unchanged: np.ndarray) -> None:
        """Adds [N, H, W] {0, 1} predictions and [N, H, W] bool changed / unchanged masks."""
        pred = np.asarray(pred)
        changed = np.asarray(changed, bool)
        unchanged = np.asarray(unchanged, bool)
        _check_shapes("pred", pred, "changed", changed)
        _check_shapes("pred", pred, "unchanged", unchanged)
        bad = (pred != 0) & (pred != 1)
        if bad.any():
            raise ValueError(f"pred value {pred[bad][0]} is not 0 or 1.")
        both = changed & unchanged
        if both.any():
            raise ValueError(f"{int(both.sum())} pixels are labelled both changed and unchanged.")
        pred = pred.astype(bool)
        self.tp += int(np.sum(pred & changed))
        self.fp += int(np.sum(pred & unchanged))
        self.fn += int(np.sum(~pred & changed))
        self.tn += int(np.sum(~pred & unchanged))

    def result(self) -> dict[str, float]:
        """Change-class precision, recall, f1, iou; oa and num_labelled over labelled pixels."""
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        total = tp + fp + fn + tn
        return {
            "precision": float(_ratio(tp, tp + fp)),
            "recall": float(_ratio(tp, tp + fn)),
            "f1": float(_ratio(2 * tp, 2 * tp + fp + fn)),
            "iou": float(_ratio(tp, tp + fp + fn)),
            "oa": float(_ratio(tp + tn, total)),
            "num_labelled": total,
        }


def change_metrics(pred: np.ndarray, changed: np.ndarray, unchanged: np.ndarray) -> dict:
    """One-shot `ChangeMetrics` over [N, H, W] predictions and reference masks."""
    metric = ChangeMetrics()
    metric.update(pred, changed, unchanged)
    return metric.result()


def binary_counts_by_threshold(
    scores: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Confusion counts of "positive where score > t" for every distinct cut of the scores.

    Args:
      scores: [N] finite scores.
      positive: [N] bool references.
    Returns:
      (thresholds f64[M + 1], {"tp", "fp", "fn", "tn"}: int64[M + 1]) for the M distinct scores:
      threshold 0 lies just under the smallest score (all positive), threshold j in 1..M-1 halfway
      between the (j-1)-th and j-th, threshold M is the largest score (all negative).
    """
    scores = np.asarray(scores, np.float64).ravel()
    positive = np.asarray(positive, bool).ravel()
    _check_shapes("scores", scores, "positive", positive)
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("scores must be a non-empty array of finite values.")
    values, inverse = np.unique(scores, return_inverse=True)
    at_or_above = lambda x: np.r_[np.cumsum(x[::-1])[::-1], 0]
    tp = at_or_above(np.bincount(inverse, positive, len(values))).astype(np.int64)
    fp = at_or_above(np.bincount(inverse, ~positive, len(values))).astype(np.int64)
    thresholds = np.r_[np.nextafter(values[0], -np.inf), (values[:-1] + values[1:]) / 2, values[-1]]
    counts = {"tp": tp, "fp": fp, "fn": tp[0] - tp, "tn": fp[0] - fp}
    return thresholds, counts


def binary_scores(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """f1 of the positive class and miou_macro of both classes (as `SegmentationMetrics`: a class
    in neither references nor predictions is left out) from {"tp", "fp", "fn", "tn"} arrays."""
    tp, fp, fn, tn = (np.asarray(counts[k], np.float64) for k in ("tp", "fp", "fn", "tn"))
    ious = np.stack([_ratio(tn, tn + fp + fn), _ratio(tp, tp + fp + fn)])
    defined = ~np.isnan(ious)
    miou = _ratio(np.where(defined, ious, 0).sum(0), defined.sum(0))
    return {"f1": _ratio(2 * tp, 2 * tp + fp + fn), "miou_macro": miou}


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    num_examples: int,
    *,
    resamples: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a statistic over examples.

    Args:
      statistic: maps example indices int[N] (drawn with replacement) to the metric on them.
      num_examples: N, the test set size.
    Returns:
      (low, high), the (1 - level) / 2 and (1 + level) / 2 quantiles over `resamples` draws;
      draws on which the statistic is NaN are left out.
    """
    rng = np.random.default_rng(seed)
    draws = np.asarray(
        [statistic(rng.integers(0, num_examples, num_examples)) for _ in range(resamples)]
    )
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
