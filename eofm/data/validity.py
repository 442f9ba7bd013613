"""Pixel values a band cannot physically take are invalid, like nodata.

A float raster written without a nodata tag often fills empty areas with an extreme value (-3.4e38,
the float32 minimum, is common). Such values are finite, so they pass the NaN and nodata checks of
`eofm.data.spec.image_and_mask`, and a few of them turn a band's mean into -1e36. Every unit of the
sensor registry has a generous range of possible values (`eofm.sensors.VALID_RANGES`). Sources call
`mask_out_of_range` on each image they read (except 8-bit image files, which cannot hold such
values): values outside the range become invalid like nodata (mask False, value 0), and an
`OutOfRangeWarning` names the file, the bands and the pixel counts. `OutOfRangeReport` collects
these warnings, e.g. while `eofm.data.arrayrecord.prepare` computes the statistics, for stats.json
and one summary line.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from eofm.data.spec import SensorSpec

T = TypeVar("T")


class OutOfRangeWarning(UserWarning):
    """Pixels outside their band's physical range were masked as invalid.

    Attributes:
        key: sample key of the image (e.g. "s2").
        counts: {origin (a file): {band: pixels}}, only bands with such pixels.
        spec: the sensor and bands of the image.
    """

    def __init__(self, key: str, counts: Mapping[str, Mapping[str, int]], spec: SensorSpec):
        self.key, self.spec = key, spec
        self.counts = {origin: dict(bands) for origin, bands in counts.items()}
        info = spec.sensor_info
        parts = []
        for origin, bands in self.counts.items():
            listed = ", ".join(
                f"{band} {n} px (valid {_interval(info.band(band).valid_range)}"
                f" {info.band(band).unit})"
                for band, n in bands.items()
            )
            parts.append(f"{origin} ({key}): {listed}")
        super().__init__(
            "values outside the physical range of their band, masked as invalid: "
            + "; ".join(parts)
        )

    def __reduce__(self):
        # Rebuilt from its fields when it crosses a process boundary (raised with -W error).
        return type(self), (self.key, self.counts, self.spec)


def _interval(bounds: tuple[float, float]) -> str:
    return f"[{bounds[0]:g}, {bounds[1]:g}]"


def mask_out_of_range(
    image: np.ndarray,
    valid: np.ndarray,
    spec: SensorSpec,
    *,
    key: str,
    where: str | Sequence[str],
) -> None:
    """Marks pixels outside their band's `valid_range` invalid and zeroes them, in place.

    Args:
        image: f32[H, W, C] with the bands of `spec`, in the registry's units.
        valid: bool[H, W, C], updated.
        spec: the sensor and bands of the channels.
        key: sample key of the image, for the warning.
        where: the file the image was read from, or one file per band.
    Warns:
        OutOfRangeWarning: when any valid pixel was out of range.
    """
    bands = spec.sensor_info.bands
    low = np.array([b.valid_range[0] for b in bands], np.float32)
    high = np.array([b.valid_range[1] for b in bands], np.float32)
    outside = valid & ((image < low) | (image > high))
    per_band = outside.reshape(-1, len(bands)).sum(axis=0)
    if not per_band.any():
        return
    valid &= ~outside
    image[outside] = 0.0
    origins = [where] * len(bands) if isinstance(where, str) else list(where)
    counts: dict[str, dict[str, int]] = {}
    for origin, band, n in zip(origins, spec.bands, per_band.tolist(), strict=True):
        if n:
            counts.setdefault(origin, {})[band] = n
    warnings.warn(OutOfRangeWarning(key, counts, spec), stacklevel=2)


class OutOfRangeReport:
    """Out-of-range pixel counts gathered from `OutOfRangeWarning`s.

    Attributes:
        counts: {key: {origin: {band: pixels}}}.
    """

    def __init__(self):
        self.counts: dict[str, dict[str, dict[str, int]]] = {}

    def collect(self, read: Callable[..., T], *args: Any) -> T:
        """Returns `read(*args)`, recording the `OutOfRangeWarning`s it raises instead of showing
        them; other warnings pass through."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = read(*args)
        for w in caught:
            if isinstance(w.message, OutOfRangeWarning):
                self.add(w.message.key, w.message.counts)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return result

    def add(self, key: str, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Adds {origin: {band: pixels}} of image `key`."""
        by_origin = self.counts.setdefault(key, {})
        for origin, bands in counts.items():
            mine = by_origin.setdefault(origin, {})
            for band, n in bands.items():
                mine[band] = mine.get(band, 0) + int(n)

    def summary(self, max_files: int = 10) -> str:
        """One line: how many pixels of how many files, naming the first `max_files` files."""
        entries = [
            (origin, key, bands)
            for key, by_origin in self.counts.items()
            for origin, bands in by_origin.items()
        ]
        total = sum(n for _, _, bands in entries for n in bands.values())
        named = "; ".join(
            f"{origin} ({key}: {', '.join(f'{b} {n}' for b, n in bands.items())})"
            for origin, key, bands in entries[:max_files]
        )
        more = f"; and {len(entries) - max_files} more" if len(entries) > max_files else ""
        return (
            f"{total} pixels in {len(entries)} file(s) lie outside the physical range of their"
            f" band and were excluded as invalid (pixels per band): {named}{more}"
        )
