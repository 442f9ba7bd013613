"""Per-band statistics of an EO dataset, computed in one streaming pass.

Datasets rarely fit in memory, so `BandStatsAccumulator` consumes chunks of shape [..., C] and keeps,
per band, only O(num_bins) state:

* count, mean and population std (ddof=0): float64 per-chunk sums combined with the parallel
    update of Chan et al., so the result agrees with a single two-pass computation to ~1e-12;
* exact min and max;
* percentiles (by default p1 and p99) read from a mergeable histogram.

Nodata (`valid` False) and non-finite values are excluded everywhere.

Histogram. Bins have width `w = 2**e` and are aligned on multiples of `w`: bin `i` covers
`[(m + i) * w, (m + i + 1) * w)` for an integer offset `m`. The first chunk picks the finest such grid
that holds its range; whenever later values (or a merged accumulator) fall outside, the grid grows to
`w * 2**k` (k >= 0, possibly 0 for a pure shift) with a new offset chosen so that everything fits.
Because all grids are dyadic and aligned, every new bin edge is an old bin edge: old bin `i` lands in
new bin `(i + j) // 2**k` with `j = m - m' * 2**k`, and counts are moved exactly.

Percentiles use numpy's default ('linear') definition: the q-th percentile of n sorted values `v` is
the linear interpolation between `v[floor(h)]` and `v[floor(h) + 1]` at `h = (n - 1) * q / 100`.
The order statistics are located from cumulative bin counts. Guarantees:

* in general the error is at most one (final) bin width, i.e. about `range / num_bins`;
* integer-valued data whose overall range is below `num_bins` ends on a grid of width <= 1, where a
    bin holds at most one integer, and the result equals `np.percentile` exactly. The default of 2**16
    bins makes this hold for any uint16 DN (Sentinel-2, Landsat) at 512 KiB of state per band.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from eofm import files

FORMAT = "eofm.band_stats/1"

# Bins are never finer than 2**-40 times the magnitude of the first values seen, which keeps
# `value / width` far inside the range of exactly representable integers.
_FINEST_RELATIVE_EXP = 40


def percentile_key(q: float) -> str:
    """Result key of the q-th percentile: 1 -> "p1", 99 -> "p99", 0.5 -> "p0.5"."""
    return f"p{q:g}"


class _DyadicHistogram:
    """Counts of one band on the grid described in the module docstring."""

    def __init__(self, num_bins: int):
        self.num_bins = num_bins
        self.counts: np.ndarray | None = None  # int64[num_bins], allocated on the first values.
        self.exp = 0  # Bin width is 2**exp.
        self.offset = 0  # Bin i covers [(offset + i) * 2**exp, (offset + i + 1) * 2**exp).
        self.integral = True  # Whether every value seen so far is an integer.

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exp)

    def add(self, values: np.ndarray) -> None:
        """Adds a non-empty 1-D float64 array of finite values."""
        vmin, vmax = float(values.min()), float(values.max())
        self.integral &= bool(np.all(np.floor(values) == values))
        if self.counts is None:
            scale = max(abs(vmin), abs(vmax)) or 1.0
            self._cover(math.frexp(scale)[1] - _FINEST_RELATIVE_EXP, (vmin, vmax), None)
        elif not self._fits(vmin, vmax):
            self._cover(self.exp, (vmin, vmax), None)
        idx = np.floor(np.ldexp(values, -self.exp)).astype(np.int64) - self.offset
        self.counts += np.bincount(idx, minlength=self.num_bins)

    def merge(self, other: _DyadicHistogram) -> None:
        """Adds the counts of `other` (which is left unchanged)."""
        if other.counts is None:
            return
        if self.counts is None:
            self.counts = other.counts.copy()
            self.exp, self.offset, self.integral = other.exp, other.offset, other.integral
            return
        self.integral &= other.integral
        self._cover(max(self.exp, other.exp), None, other)

    def _index(self, value: float, exp: int) -> int:
        """Global (offset-free) index of the bin of width 2**exp that holds `value`."""
        return math.floor(math.ldexp(value, -exp))

    def _fits(self, vmin: float, vmax: float) -> bool:
        return vmin >= math.ldexp(self.offset, self.exp) and vmax < math.ldexp(
            self.offset + self.num_bins, self.exp
        )

    def _occupied(self) -> tuple[int, int, int] | None:
        """(exp, first, last) global indices of the non-empty bins, or None when there are none."""
        if self.counts is None:
            return None
        nonzero = np.flatnonzero(self.counts)
        if nonzero.size == 0:
            return None
        return self.exp, self.offset + int(nonzero[0]), self.offset + int(nonzero[-1])

    def _cover(
        self, min_exp: int, value_range: tuple[float, float] | None, absorb: _DyadicHistogram | None
    ) -> None:
        """Moves to the finest grid with exp >= min_exp holding the current counts, `value_range`
        and the counts of `absorb`, then adds the latter."""
        sources = [self] + ([absorb] if absorb is not None else [])
        occupied = [occ for occ in (h._occupied() for h in sources) if occ is not None]

        def index_bounds(exp: int) -> tuple[int, int]:
            # Python's >> is a floor division by 2**shift, also for negative indices.
            lows = [first >> (exp - e) for e, first, _ in occupied]
            highs = [last >> (exp - e) for e, _, last in occupied]
            if value_range is not None:
                lows.append(self._index(value_range[0], exp))
                highs.append(self._index(value_range[1], exp))
            return min(lows), max(highs)

        # Jump to just below the width that the overall span needs, then step up until it fits.
        lo_vals = [math.ldexp(first, e) for e, first, _ in occupied]
        hi_vals = [math.ldexp(last + 1, e) for e, _, last in occupied]
        if value_range is not None:
            lo_vals.append(value_range[0])
            hi_vals.append(value_range[1])
        span = max(hi_vals) - min(lo_vals)
        exp = min_exp
        if span > 0:
            exp = max(exp, math.frexp(span / self.num_bins)[1] - 2)
        low, high = index_bounds(exp)
        while high - low >= self.num_bins:
            exp += 1
            low, high = index_bounds(exp)
        # Centre the occupied range so that growth in either direction is equally cheap.
        offset = low - (self.num_bins - 1 - (high - low)) // 2

        counts = np.zeros(self.num_bins, np.int64)
        for h in sources:
            if h.counts is None:
                continue
            nonzero = np.flatnonzero(h.counts)
            shift = min(exp - h.exp, 63)  # int64 >> 63 already maps every index to 0 or -1.
            new_idx = np.right_shift(nonzero + h.offset, shift) - offset
            np.add.at(counts, new_idx, h.counts[nonzero])
        self.counts, self.exp, self.offset = counts, exp, offset

    def percentiles(self, qs: Sequence[float], vmin: float, vmax: float) -> list[float]:
        """numpy-'linear' percentiles; `vmin`/`vmax` are the exact extremes of the data."""
        counts = self.counts
        cum = np.cumsum(counts)
        n = int(cum[-1])
        exact = self.integral and self.exp <= 0

        def order_statistic(rank: int) -> float:
            if rank == 0:
                return vmin
            if rank == n - 1:
                return vmax
            b = int(np.searchsorted(cum, rank, side="right"))
            left = math.ldexp(self.offset + b, self.exp)
            if exact:  # A bin of width <= 1 holds a single integer: the first one >= its left edge.
                return float(math.ceil(left))
            # Otherwise assume the bin's values are spread evenly over it.
            c = int(counts[b])
            estimate = left + (rank - (int(cum[b]) - c) + 0.5) / c * self.width
            return min(max(estimate, vmin), vmax)

        out = []
        for q in qs:
            h = (n - 1) * (q / 100)
            if h >= n - 1:
                out.append(vmax)
                continue
            i = math.floor(h)
            gamma = h - i
            a, b = order_statistic(i), order_statistic(i + 1)
            # Same arithmetic as numpy's interpolation, so that exact order statistics give
            # bit-identical results.
            diff = b - a
            out.append(b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma)
        return out


class BandStatsAccumulator:
    """Streaming per-band count, mean, std, min, max and percentiles; see the module docstring.

    Usage:
        acc = BandStatsAccumulator(["B02", "B03", "B04"])
        for image, valid in chunks:  # [..., 3] arrays
            acc.update(image, valid)
        stats = acc.result()  # {"B02": {"count": ..., "mean": ..., "p1": ..., ...}, ...}

    Accumulators built on different workers combine with `merge`.
    """

    def __init__(
        self,
        band_names: Sequence[str],
        percentiles: Sequence[float] = (1.0, 99.0),
        num_bins: int = 2**16,
    ):
        self.band_names = tuple(band_names)
        if not self.band_names or len(set(self.band_names)) != len(self.band_names):
            raise ValueError(f"band_names must be non-empty and unique, got {self.band_names}")
        self.percentiles = tuple(float(q) for q in percentiles)
        bad = [q for q in self.percentiles if not 0.0 <= q <= 100.0]
        if bad:
            raise ValueError(f"percentiles must lie in [0, 100], got {bad}")
        if len({percentile_key(q) for q in self.percentiles}) != len(self.percentiles):
            raise ValueError(f"duplicate percentiles: {self.percentiles}")
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.num_bins = int(num_bins)
        c = len(self.band_names)
        self._count = np.zeros(c, np.int64)
        self._mean = np.zeros(c, np.float64)
        self._m2 = np.zeros(c, np.float64)  # Sum of squared deviations from the mean.
        self._min = np.full(c, np.inf)
        self._max = np.full(c, -np.inf)
        self._hists = [_DyadicHistogram(self.num_bins) for _ in range(c)]

    def update(self, x: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Adds a chunk.

        Args:
            x: [..., C] array (any leading dims, C == len(band_names)).
            valid: bool, same shape as x or broadcastable to it ([..., 1] or [...]). Values where
                valid is False or x is not finite are excluded.
        """
        x = np.asarray(x)
        c = len(self.band_names)
        if x.ndim == 0 or x.shape[-1] != c:
            raise ValueError(
                f"expected {c} channels ({', '.join(self.band_names)}) in the last "
                f"axis, got shape {x.shape}"
            )
        ok = np.isfinite(x)
        if valid is not None:
            valid = np.asarray(valid).astype(bool, copy=False)
            if valid.ndim == x.ndim - 1:  # One flag per pixel, shared by all bands.
                valid = valid[..., None]
            try:
                ok &= np.broadcast_to(valid, x.shape)
            except ValueError:
                raise ValueError(
                    f"valid of shape {valid.shape} does not broadcast to the data shape {x.shape}"
                ) from None
        x = x.astype(np.float64, copy=False).reshape(-1, c)
        ok = ok.reshape(-1, c)
        self._update_moments(x, ok)
        for band, hist in enumerate(self._hists):
            values = x[ok[:, band], band]
            if values.size:
                hist.add(values)

    def _update_moments(self, x: np.ndarray, ok: np.ndarray) -> None:
        count = ok.sum(axis=0)
        safe = np.maximum(count, 1)
        mean = np.where(ok, x, 0.0).sum(axis=0) / safe
        dev = np.where(ok, x - mean, 0.0)
        m2 = np.einsum("nc,nc->c", dev, dev)
        self._combine(count, mean, m2)
        self._min = np.minimum(self._min, np.where(ok, x, np.inf).min(axis=0, initial=np.inf))
        self._max = np.maximum(self._max, np.where(ok, x, -np.inf).max(axis=0, initial=-np.inf))

    def _combine(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        """Chan et al.'s parallel update of (count, mean, m2) with another partition."""
        n_a, n_b = self._count.astype(np.float64), count.astype(np.float64)
        n = n_a + n_b
        safe = np.maximum(n, 1.0)
        delta = mean - self._mean
        new_mean = self._mean + delta * (n_b / safe)
        new_m2 = self._m2 + m2 + delta * delta * (n_a * n_b / safe)
        # Keep the other side verbatim where this side is empty (and vice versa) to avoid rounding.
        self._mean = np.where(n_a == 0, mean, np.where(n_b == 0, self._mean, new_mean))
        self._m2 = np.where(n_a == 0, m2, np.where(n_b == 0, self._m2, new_m2))
        self._count = self._count + count

    def merge(self, other: BandStatsAccumulator) -> None:
        """Adds everything `other` has seen (e.g. from another worker); `other` is unchanged."""
        if other.band_names != self.band_names:
            raise ValueError(
                f"cannot merge accumulators over different bands: "
                f"{self.band_names} vs {other.band_names}"
            )
        if other.num_bins != self.num_bins:
            raise ValueError(
                f"cannot merge accumulators with different num_bins: "
                f"{self.num_bins} vs {other.num_bins}"
            )
        self._combine(other._count, other._mean, other._m2)
        self._min = np.minimum(self._min, other._min)
        self._max = np.maximum(self._max, other._max)
        for mine, theirs in zip(self._hists, other._hists):
            mine.merge(theirs)

    def bin_width(self, band: str) -> float:
        """Current histogram bin width of `band`: the error bound of its percentiles."""
        return self._hists[self.band_names.index(band)].width

    def result(self) -> dict[str, dict[str, float]]:
        """{band: {"count", "mean", "std", "min", "max", "p1", "p99", ...}} as Python numbers.

        Raises:
            ValueError: when a band has no valid value.
        """
        empty = [name for name, n in zip(self.band_names, self._count) if n == 0]
        if empty:
            raise ValueError(f"no valid pixels for band(s) {', '.join(empty)}")
        out = {}
        for i, name in enumerate(self.band_names):
            n = int(self._count[i])
            vmin, vmax = float(self._min[i]), float(self._max[i])
            stats = {
                "count": n,
                "mean": float(self._mean[i]),
                "std": math.sqrt(max(float(self._m2[i]), 0.0) / n),
                "min": vmin,
                "max": vmax,
            }
            values = self._hists[i].percentiles(self.percentiles, vmin, vmax)
            stats.update({percentile_key(q): v for q, v in zip(self.percentiles, values)})
            out[name] = stats
        return out


def compute_band_stats(
    arrays: Iterable[np.ndarray | tuple[np.ndarray, np.ndarray]],
    band_names: Sequence[str],
    **kwargs,
) -> dict[str, dict[str, float]]:
    """Stats over an iterable of chunks, each `x` or `(x, valid)`; kwargs go to the accumulator."""
    acc = BandStatsAccumulator(band_names, **kwargs)
    for item in arrays:
        if isinstance(item, tuple):
            acc.update(*item)
        else:
            acc.update(item)
    return acc.result()


def _json_number(value) -> int | float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"expected a number, got {value!r}")
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


def write_stats_json(
    path: str | os.PathLike,
    stats: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    sensors: Mapping[str, str],
    out_of_range: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None,
) -> None:
    """Writes `{sample_key: {band: {stat: value}}}` to `path` atomically.

    Layout:
        {"format": "eofm.band_stats/1",
         "sensors": {key: {"sensor": <registry sensor name>, "bands": [...], "stats": {band: {...}},
                           "out_of_range": {"pixels": {band: n}, "files": {file: {band: n}}}}}}

    Args:
        path: destination; written to `path + ".tmp"` first, then renamed over `path`.
        stats: per sample key (e.g. "s2"), per band, the statistics (e.g. from `result()`); band
            order is preserved in "bands".
        sensors: registry sensor name (e.g. "sentinel2_l2a") of every sample key in `stats`.
        out_of_range: per sample key, {file: {band: pixels}} of the values outside the physical
            range of their band (`eofm.data.validity`), which the statistics exclude; written when
            given, with the total per band.
    """
    missing = [k for k in stats if k not in sensors]
    if missing:
        raise ValueError(f"no sensor name given for sample key(s) {missing}")
    doc = {"format": FORMAT, "sensors": {}}
    for key, bands in stats.items():
        doc["sensors"][key] = {
            "sensor": str(sensors[key]),
            "bands": list(bands),
            "stats": {
                band: {k: _json_number(v) for k, v in values.items()}
                for band, values in bands.items()
            },
        }
        if out_of_range is not None:
            doc["sensors"][key]["out_of_range"] = _out_of_range_entry(
                list(bands), out_of_range.get(key, {})
            )
    files.write_text_atomic(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")


def _out_of_range_entry(
    bands: Sequence[str], by_file: Mapping[str, Mapping[str, int]]
) -> dict[str, dict]:
    pixels = {band: sum(int(counts.get(band, 0)) for counts in by_file.values()) for band in bands}
    files = {f: {b: int(n) for b, n in counts.items()} for f, counts in by_file.items()}
    return {"pixels": pixels, "files": files}


def read_stats_json(path: str | os.PathLike) -> dict[str, dict]:
    """Reads a file from `write_stats_json` and returns its "sensors" dict.

    Raises:
        ValueError: naming the file, when it is not valid JSON or does not follow the layout.
    """
    path = os.fspath(path)
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e

    def fail(msg: str):
        raise ValueError(f"{path}: {msg}")

    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        fail(f"expected format {FORMAT!r}, got {got!r}")
    sensors = doc.get("sensors")
    if not isinstance(sensors, dict):
        fail('missing or malformed "sensors"')
    for key, entry in sensors.items():
        if not isinstance(entry, dict):
            fail(f"sensors[{key!r}] is not an object")
        for field, kind in (("sensor", str), ("bands", list), ("stats", dict)):
            if not isinstance(entry.get(field), kind):
                fail(f"sensors[{key!r}] lacks a valid {field!r}")
        bands, stats = entry["bands"], entry["stats"]
        if not all(isinstance(b, str) for b in bands) or sorted(bands) != sorted(stats):
            fail(f"sensors[{key!r}]: bands {bands} do not match stats for {list(stats)}")
        for band, values in stats.items():
            if not isinstance(values, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()
            ):
                fail(f"sensors[{key!r}].stats[{band!r}] is not a mapping of numbers")
    return sensors
