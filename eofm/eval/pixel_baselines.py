"""Trivial per-pixel baselines of the dense tasks, scored like the encoder on its test pixels.

- Constant maps: change detection "all negative" / "all positive" (unchanged / changed
  everywhere); segmentation "all <class>" for each class.
- One-band thresholds: a score per pixel, class 1 above (or below) a threshold whose value and
  direction maximise the task's headline metric on the training pixels (labelled, not held out),
  then applied unchanged to the test scenes. Change detection scores the change magnitude, the
  L2 norm over bands of normalised after - before; binary segmentation takes the best of every
  normalised band and the normalised-difference indices its bands allow (NDWI, MNDWI, NDVI, from
  the registry's common band names).

A scene here is `eofm.eval.dense.Scene`; `normalized(scene, key)` gives its images as the encoder
saw them (`dense.Normalizers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from eofm import sensors
from eofm.eval import metrics

# Index name -> (a, b) common band names of (a - b) / (a + b).
NORMALIZED_DIFFERENCES = {
    "NDWI": ("green", "nir"),
    "MNDWI": ("green", "swir16"),
    "NDVI": ("nir", "red"),
}

Normalized = Callable[[Any, str], np.ndarray]  # (scene, key) -> f32[H, W, C]
ScoreMap = Callable[[Any], np.ndarray]  # scene -> f32[H, W]


@dataclasses.dataclass(frozen=True)
class Threshold:
    """Class 1 where the score is above `value` (`above`) or below it; `train_score` is the
    headline metric it reached on the training pixels."""

    value: float
    above: bool
    train_score: float

    def apply(self, score: np.ndarray) -> np.ndarray:
        """int64 class map (0 / 1) of a score map."""
        return (score > self.value if self.above else score < self.value).astype(np.int64)

    @property
    def relation(self) -> str:
        return ">" if self.above else "<"


def best_threshold(
    scores: np.ndarray, positive: np.ndarray, metric: str, *, both_directions: bool = True
) -> Threshold:
    """The threshold (and direction) of `scores` [N] maximising `metric` ("f1" or "miou_macro",
    `metrics.binary_scores`) against `positive` bool[N]; above first on ties."""
    best = None
    for above in (True, False) if both_directions else (True,):
        sign = 1.0 if above else -1.0
        thresholds, counts = metrics.binary_counts_by_threshold(sign * scores, positive)
        values = np.nan_to_num(metrics.binary_scores(counts)[metric], nan=-1.0)
        j = int(np.argmax(values))
        if best is None or values[j] > best.train_score:
            best = Threshold(float(sign * thresholds[j]), above, float(values[j]))
    return best


def training_pixels(scene) -> np.ndarray:
    """bool[H, W]: the labelled pixels of `scene` outside its test region."""
    return (scene.mask >= 0) & ~scene.held_out


def _finite(x: np.ndarray) -> np.ndarray:
    """f32 copy of x with non-finite values (invalid pixels) set to 0."""
    return np.nan_to_num(np.asarray(x, np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def change_magnitude(key_before: str, key_after: str, normalized: Normalized) -> ScoreMap:
    """scene -> f32[H, W] L2 norm over bands of normalised after - before."""
    return lambda scene: _finite(
        np.linalg.norm(normalized(scene, key_after) - normalized(scene, key_before), axis=-1)
    )


def _band_position(spec, common_name: str) -> int | None:
    """Position in `spec.bands` of the band the registry calls `common_name` (None if absent)."""
    try:
        name = sensors.get_sensor(spec.sensor).band(common_name).name
    except sensors.UnknownBandError:
        return None
    return spec.bands.index(name) if name in spec.bands else None


def normalized_band(key: str, position: int, normalized: Normalized) -> ScoreMap:
    """scene -> f32[H, W] band `position` of the normalised image `key`."""
    return lambda scene: _finite(normalized(scene, key)[..., position])


def normalized_difference(key: str, a: str, b: str) -> ScoreMap:
    """scene -> f32[H, W] (a - b) / (a + b) of the raw bands with common names a and b (0 where
    a band is invalid or a + b is 0)."""

    def score(scene) -> np.ndarray:
        i, j = (_band_position(scene.specs[key], name) for name in (a, b))
        raw, valid = scene.raw[key], scene.valid[key]
        x, y = raw[..., i].astype(np.float64), raw[..., j].astype(np.float64)
        ok = valid[..., i] & valid[..., j] & (x + y != 0)
        return np.where(ok, (x - y) / np.where(ok, x + y, 1.0), 0.0).astype(np.float32)

    return score


def segmentation_scores(key: str, train_spec, normalized: Normalized) -> dict[str, ScoreMap]:
    """{name: score map} of each normalised band of `key` (by position, named after the training
    spec) and each `NORMALIZED_DIFFERENCES` index whose bands the training spec has."""
    scores = {
        f"normalised band {name}": normalized_band(key, i, normalized)
        for i, name in enumerate(train_spec.bands)
    }
    for index, (a, b) in NORMALIZED_DIFFERENCES.items():
        if _band_position(train_spec, a) is not None and _band_position(train_spec, b) is not None:
            scores[index] = normalized_difference(key, a, b)
    return scores


def fit_threshold(score: ScoreMap, train: Sequence, metric: str) -> Threshold:
    """The best threshold of `score` on the training pixels of the `train` scenes, class 1 being
    mask == 1."""
    values, positive = [], []
    for scene in train:
        keep = training_pixels(scene)
        values.append(score(scene)[keep])
        positive.append(scene.mask[keep] == 1)
    return best_threshold(np.concatenate(values), np.concatenate(positive), metric)


def constant_maps(test: Sequence, value: int) -> list[np.ndarray]:
    """int64[H, W] maps of `value`, one per test scene."""
    return [np.full(scene.mask.shape, value, np.int64) for scene in test]


def _entry(description: str, scores: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "metrics": scores}


def _threshold_entry(
    name: str,
    what: str,
    threshold: Threshold,
    metric: str,
    test_scores: list[np.ndarray],
    score_fn: Callable[[list[np.ndarray]], dict],
) -> tuple[str, dict[str, Any]]:
    """(baseline name, entry) of a fitted threshold applied to the test scenes' score maps."""
    t = threshold.value
    entry = {
        "description": (
            f"{what} {threshold.relation} {t:.4g}, the threshold and direction maximising {metric}"
            f" on the training pixels ({metric} {threshold.train_score:.3f} there)"
        ),
        "metrics": score_fn([threshold.apply(s) for s in test_scores]),
        "threshold": dataclasses.asdict(threshold),
    }
    return f"threshold {name} (t={t:.3g} from training pixels)", entry


def change_baselines(task, train, test, normalized: Normalized) -> dict[str, dict[str, Any]]:
    """All negative, all positive and the change-magnitude threshold, scored by `task.score`."""
    score_fn = lambda preds: task.score(preds, [s.mask for s in test], 2)
    out = {
        "all negative": _entry("every pixel unchanged", score_fn(constant_maps(test, 0))),
        "all positive": _entry("every pixel changed", score_fn(constant_maps(test, 1))),
    }
    magnitude = change_magnitude(*task.keys, normalized)
    threshold = fit_threshold(magnitude, train, task.headline)
    name, entry = _threshold_entry(
        "change magnitude",
        "changed where the L2 norm over bands of normalised after - before",
        threshold,
        task.headline,
        [magnitude(s) for s in test],
        score_fn,
    )
    out[name] = entry
    return out


def segmentation_baselines(
    task, train, test, normalized: Normalized, class_names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Each class everywhere and, with two classes, the best one-band threshold of
    `segmentation_scores`, scored by `task.score`."""
    k = len(class_names)
    score_fn = lambda preds: task.score(preds, [s.mask for s in test], k)
    out = {
        f"all {name}": _entry(f"every pixel {name}", score_fn(constant_maps(test, c)))
        for c, name in enumerate(class_names)
    }
    if k != 2:
        return out
    (key,) = task.keys
    candidates = segmentation_scores(key, train[0].specs[key], normalized)
    fitted = {
        name: fit_threshold(score, train, task.headline) for name, score in candidates.items()
    }
    best = max(fitted, key=lambda name: fitted[name].train_score)
    name, entry = _threshold_entry(
        best,
        f"{class_names[1]} where {best} (best of {len(fitted)} bands and indices)",
        fitted[best],
        task.headline,
        [candidates[best](s) for s in test],
        score_fn,
    )
    out[name] = entry
    return out
