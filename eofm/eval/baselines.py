"""Trivial baselines of a classification evaluation, scored on the encoder's own split.

- majority: looks at no image. Single-label: every test image gets the most frequent training
  class (OA = that class's share of the test set). Multi-label: every test image is scored by the
  training label frequencies, so each class's AP is its prevalence in test, and F1 (threshold 0.5)
  predicts the classes present in at least half the training images.
- image statistics: per-band mean, standard deviation and 5th / 50th / 95th percentiles of each
  raw image over its valid pixels, [N, 5 * C]; the evaluation fits its `linear` probe on them.

`baseline:image_stats` makes these features the frozen "encoder" of a classification evaluation
(method knn or linear): raw values at the images' native size. Having no weights and no feature
maps, it cannot be finetuned or read by dense tasks.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from eofm.eval import encoders
from eofm.train import validate

RAW = "none (raw)"
IMAGE_STATS = encoders.BASELINE_PREFIX + "image_stats"
PERCENTILES = (5, 50, 95)
FEATURES = (
    "per-band mean, std and 5th/50th/95th percentiles of the raw values over each image's valid"
    " pixels ([5 * C]: the C means, then the C stds, then each percentile)"
)
MAJORITY = {
    False: "the most frequent training class for every test image",
    True: (
        "every test image scored by the training label frequencies (F1: the classes in at least"
        " half the training images)"
    ),
}
IMAGE_STATS_PROBE = f"linear probe (the `linear` protocol) on {FEATURES}"


def image_statistics(images: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-band statistics of each image over its valid pixels.

    Args:
      images: [N, H, W, C] in the source's units; NaN marks an invalid pixel.
      valid: optional bool [N, H, W, C]; False marks an invalid pixel too.
    Returns:
      f32[N, 5 * C]: means, stds, 5th, 50th and 95th percentiles, each over the C bands in order;
      0 for a band without valid pixels.
    """
    x = np.asarray(images, np.float32)
    if valid is not None:
        x = np.where(valid, x, np.nan)
    x = x.reshape(len(x), -1, x.shape[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bands without a valid pixel
        parts = [np.nanmean(x, 1), np.nanstd(x, 1), *np.nanpercentile(x, PERCENTILES, axis=1)]
    return np.nan_to_num(np.concatenate(parts, -1)).astype(np.float32)


def majority_scores(train_labels: np.ndarray, num_test: int, num_classes: int) -> np.ndarray:
    """f32[num_test, K]: the training label frequencies (class shares, or per-class prevalence of
    multi-hot labels [N, K]) for every test image."""
    if train_labels.ndim == 2:
        frequencies = train_labels.mean(0)
    else:
        frequencies = np.bincount(train_labels, minlength=num_classes) / len(train_labels)
    return np.tile(np.asarray(frequencies, np.float32), (num_test, 1))


@dataclasses.dataclass(frozen=True)
class ImageStatsEncoder:
    """`image_statistics` as the frozen encoder of a classification evaluation: what
    `report.encoder_card` reads, the band checks and `pooled_fn`. Its inputs are raw (RAW: invalid
    pixels NaN) at the data's native `image_size`."""

    image_size: int
    ref: str = IMAGE_STATS
    name: str = "baseline"
    variant: str = "image_stats"
    step: int | None = None
    normalization: str = RAW
    feature_definition: str = FEATURES

    def zero_filled_bands(self, inputs: Iterable[Any]) -> dict[str, list[str]]:
        """{}: the statistics read every band of the data."""
        return {}

    def stand_in_bands(self, inputs: Iterable[Any]) -> dict[str, dict[str, str]]:
        """{}: no band stands in for another."""
        return {}

    def pooled_fn(self, spec: Any) -> Callable[[np.ndarray], np.ndarray]:
        """images [B, S, S, C] (NaN = invalid) -> f32[B, 5 * C]."""
        return image_statistics


def is_baseline(ref: str) -> bool:
    return ref.startswith(encoders.BASELINE_PREFIX)


def check_encoder(ref: str, method: str) -> None:
    """Refuses a baseline reference other than IMAGE_STATS, or one given to method=finetune."""
    if not is_baseline(ref):
        return
    if ref != IMAGE_STATS:
        raise validate.ConfigError(f"config key encoder = {ref!r}: the baseline is {IMAGE_STATS}")
    if method == "finetune":
        raise validate.ConfigError(
            f"config key encoder = {ref!r} with method=finetune: image statistics have no weights"
            " to finetune; use method=knn or method=linear"
        )
