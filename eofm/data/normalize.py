"""Per-band normalisation of samples, with the methods named as in the model specs.

- "zscore":           (x - mean) / std                              (dataset statistics)
- "percentile_clip":  clip((x - p1) / (p99 - p1), 0, 1)             (SMARTIES' first step)
- "mean2std_clip":    clip((x - (mean - 2 std)) / (4 std), 0, 1)    (CROMA / SeCo / SatMAE recipe)
- "minmax_per_image": (x - min) / (max - min + 1e-10), min and max over H x W of this image and band
                      (SpectralGPT pretraining); needs no statistics.

Statistics come from a stats JSON (`eofm.data.stats.write_stats_json`, written by
`scripts/prepare_arrayrecord.py`) and are looked up by band NAME, so a source that yields a band
subset or another order is normalised correctly, and statistics of another sensor are refused.
Invalid pixels (`<key>_valid` False) are 0 after normalisation ("at the mean" for z-score).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from eofm.data.spec import SensorSpec, valid_key

METHODS = ("zscore", "percentile_clip", "mean2std_clip", "minmax_per_image")
_MINMAX_EPS = 1e-10


@dataclasses.dataclass(frozen=True)
class _Affine:
    offset: np.ndarray  # [C]
    scale: np.ndarray  # [C]
    clip: bool


def _affine(method: str, band_stats: list[Mapping[str, float]]) -> _Affine:
    get = lambda name: np.array([s[name] for s in band_stats], np.float64)
    if method == "zscore":
        lo, width, clip = get("mean"), get("std"), False
    elif method == "percentile_clip":
        lo, width, clip = get("p1"), get("p99") - get("p1"), True
    elif method == "mean2std_clip":
        lo, width, clip = get("mean") - 2 * get("std"), 4 * get("std"), True
    else:
        raise AssertionError(method)
    return _Affine(lo.astype(np.float32), (1.0 / width).astype(np.float32), clip)


class Normalize(grain.transforms.Map):
    """Normalises the image keys of a sample.

    Args:
      specs: the source's `{key: SensorSpec}`.
      method: one method for every key, or `{key: method}` (keys left out are not normalised).
      stats: `{key: {"sensor": name, "bands": [...], "stats": {band: {...}}}}` as returned by
        `eofm.data.stats.read_stats_json`; may be None when every method is "minmax_per_image".
    Raises:
      ValueError: unknown method, statistics missing for a key or a band, statistics of another
        sensor, or a zero spread (std or p99 - p1) for a band.
    """

    def __init__(
        self,
        specs: Mapping[str, SensorSpec],
        method: str | Mapping[str, str],
        stats: Mapping[str, Mapping[str, Any]] | None = None,
    ):
        methods = {k: method for k in specs} if isinstance(method, str) else dict(method)
        self.methods = methods
        self._affine: dict[str, _Affine] = {}
        for key, m in methods.items():
            if m not in METHODS:
                raise ValueError(
                    f"unknown normalisation {m!r} for {key!r}; expected one of {METHODS}"
                )
            if key not in specs:
                raise ValueError(
                    f"normalisation given for {key!r}, but the data has {sorted(specs)}"
                )
            if m != "minmax_per_image":
                self._affine[key] = _affine(m, _band_stats(key, specs[key], stats))
                bad = [
                    b
                    for b, s in zip(specs[key].bands, self._affine[key].scale)
                    if not np.isfinite(s)
                ]
                if bad:
                    raise ValueError(f"statistics of {key!r} have zero spread for bands {bad}")

    @classmethod
    def of_band_stats(
        cls, key: str, spec: SensorSpec, method: str, band_stats: Mapping[str, Mapping]
    ) -> Normalize:
        """One image key normalised with per-band statistics {band: {...}} (as returned by
        `eofm.data.stats.compute_band_stats`) of `spec`'s sensor."""
        entry = {"sensor": spec.sensor, "bands": list(spec.bands), "stats": band_stats}
        return cls({key: spec}, method, {key: entry})

    def map(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        for key, method in self.methods.items():
            x = sample[key]
            valid = sample.get(valid_key(key))
            if method == "minmax_per_image":
                y = _minmax(x, valid)
            else:
                a = self._affine[key]
                y = (x - a.offset) * a.scale
                if a.clip:
                    y = np.clip(y, 0.0, 1.0)
            y = y.astype(np.float32)
            if valid is not None:
                y[~valid] = 0.0
            out[key] = y
        return out


def _band_stats(key: str, spec: SensorSpec, stats) -> list[Mapping[str, float]]:
    if stats is None or key not in stats:
        raise ValueError(
            f"no statistics for {key!r} ({spec.sensor}); available: {sorted(stats or {})}"
        )
    entry = stats[key]
    if entry["sensor"] != spec.sensor:
        raise ValueError(
            f"statistics for {key!r} are for sensor {entry['sensor']}, but the data is"
            f" {spec.sensor}"
        )
    missing = [b for b in spec.bands if b not in entry["stats"]]
    if missing:
        raise ValueError(
            f"statistics for {key!r} ({spec.sensor}) lack bands {missing};"
            f" they have {list(entry['stats'])}"
        )
    return [entry["stats"][b] for b in spec.bands]


def _minmax(x: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Per-image, per-band min-max over the valid pixels of an [H, W, C] image."""
    if valid is None:
        valid = np.ones(x.shape, bool)
    lo = np.where(valid, x, np.inf).min(axis=(0, 1))
    hi = np.where(valid, x, -np.inf).max(axis=(0, 1))
    lo = np.where(np.isfinite(lo), lo, 0.0)
    hi = np.where(np.isfinite(hi), hi, 0.0)
    return (x - lo) / (hi - lo + _MINMAX_EPS)
