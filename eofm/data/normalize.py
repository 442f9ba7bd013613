"""Per-band normalisation of samples, with the methods named as in the model specs.

- "zscore":           (x - mean) / std                              (dataset statistics)
- "percentile_clip":  clip((x - p1) / (p99 - p1), 0, 1)             (SMARTIES' first step)
- "mean2std_clip":    clip((x - (mean - 2 std)) / (4 std), 0, 1)    (CROMA / SeCo / SatMAE recipe)
- "minmax_per_image": (x - min) / (max - min + 1e-10), min and max over H x W of this image and band
                      (SpectralGPT pretraining); needs no statistics.
- "satvision_toa":    the fixed input scaling of SatVision-TOA, for bands of any sensor; needs no
                      statistics. Reflectance bands become reflectance as a fraction: the release
                      multiplies percent by 0.01, which here is x * 1 for the "reflectance" unit
                      (MODIS Level-1B, Landsat 8-9) and x * 1e-4 for "reflectance_1e4" (MOD09,
                      Sentinel-2). Brightness-temperature bands (K) become (BT - min) / (max - min),
                      not clipped, with the release's [min, max] of the MODIS emissive band whose
                      input slot they fill by wavelength (`sensors.wavelength_match`: Landsat-8
                      B10 and Landsat-5 B6 -> band 31, Landsat-8 B11 -> band 32). Other units
                      (SAR dB, DN, radiance) are an error.

Statistics come from a stats JSON (`eofm.data.stats.write_stats_json`, written by
`scripts/prepare_arrayrecord.py`) and are looked up by band NAME, so a source that yields a band
subset or another order is normalised correctly, and statistics of another sensor are refused.
Invalid pixels (`<key>_valid` False) are 0 after normalisation ("at the mean" for z-score).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from eofm import sensors as sensors_lib
from eofm.data.spec import SensorSpec, valid_key

METHODS = ("zscore", "percentile_clip", "mean2std_clip", "minmax_per_image", "satvision_toa")
_MINMAX_EPS = 1e-10

# SatVision-TOA input scaling (Spradlin et al., 2024; specs/models.md section 4.3): [min, max] in
# K of each MODIS emissive band among its input slots.
SATVISION_TOA_BT_RANGE_K = types.MappingProxyType(
    {
        "b21": (223.1222, 352.7182),
        "b27": (178.9174, 261.2920),
        "b28": (204.3739, 282.5529),
        "b29": (204.7677, 319.0373),
        "b30": (194.8686, 295.0209),
        "b31": (202.1759, 324.0677),
        "b32": (201.3823, 321.5254),
        "b33": (203.3537, 285.9848),
    }
)
_SATVISION_TOA_EMISSIVE_SLOTS = SensorSpec("modis_toa", tuple(SATVISION_TOA_BT_RANGE_K))
# Registry unit of a reflectance band -> factor giving reflectance as a fraction.
_REFLECTANCE_TO_FRACTION = types.MappingProxyType({"reflectance": 1.0, "reflectance_1e4": 1e-4})


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
            if m == "satvision_toa":
                self._affine[key] = _satvision_toa_affine(key, specs[key])
            elif m != "minmax_per_image":
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


def _satvision_toa_affine(key: str, spec: SensorSpec) -> _Affine:
    """SatVision-TOA scaling of the bands of image `key`, looked up by band unit (and, for
    brightness temperature, by the MODIS emissive slot the band fills)."""
    offsets, scales = zip(*(_satvision_toa_band(key, spec, b) for b in spec.bands))
    return _Affine(np.array(offsets, np.float32), np.array(scales, np.float32), clip=False)


def _satvision_toa_band(key: str, spec: SensorSpec, name: str) -> tuple[float, float]:
    """(offset, scale) of band `name`: reflectance -> fraction, or BT (K) -> (BT - min) / (max -
    min) of the MODIS emissive slot it fills."""
    band = spec.sensor_info.band(name)
    where = f"normalisation 'satvision_toa' of {key!r} ({spec.sensor}), band {band.name}"
    if band.unit in _REFLECTANCE_TO_FRACTION:
        return 0.0, _REFLECTANCE_TO_FRACTION[band.unit]
    if band.unit == "brightness_temperature_K":
        slot = _emissive_slot(spec, name)
        if slot is None:
            ranges = _SATVISION_TOA_EMISSIVE_SLOTS.sensor_info.bands
            raise ValueError(
                f"{where} ({band.center_nm:g} nm): fills none of the MODIS emissive slots"
                f" {', '.join(f'{b.name} {b.center_nm:g} nm' for b in ranges)}, so it has no"
                " [min, max]"
            )
        low, high = SATVISION_TOA_BT_RANGE_K[slot]
        return low, 1.0 / (high - low)
    raise ValueError(
        f"{where}: unit {band.unit} cannot be scaled; allowed units are"
        f" {', '.join(_REFLECTANCE_TO_FRACTION)} (-> reflectance as a fraction) and"
        " brightness_temperature_K (-> the min-max of a MODIS emissive slot)"
    )


def _emissive_slot(spec: SensorSpec, name: str) -> str | None:
    """The MODIS emissive band whose slot band `name` of `spec` fills by wavelength, or None."""
    slots = _SATVISION_TOA_EMISSIVE_SLOTS
    index = sensors_lib.wavelength_match(
        [spec.sensor_info.band(name)], [slots.sensor_info.band(b) for b in slots.bands]
    )
    filled = [slot for slot, i in zip(slots.bands, index) if i is not None]
    return filled[0] if filled else None


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
