"""Spectral ranges of the SMARTIES spectrum-aware tokenizer and the mapping of bands onto them.

SMARTIES embeds every band of a patch on its own with one Linear(p^2 -> D) per spectral range;
`SPECTRAL_RANGES` lists the 17 ranges that have weights, in weight-file order, and
`OFFICIAL_BLENDED_RANGES` the official configuration's two ranges (17, 18) that blend two of them.
This module decides which range(s) embed a given registry `Band`: a `BandProjection` is a convex
combination of range projections, and `projection_matrix` stacks them into a [num_bands,
num_ranges] weight matrix.

Assignment rules, in order:

1. Bands of the sensors SMARTIES was pretrained on (Sentinel-2 L1C/L2A, Sentinel-1 GRD, generic
   RGB) get the range they were trained with, from an explicit table of registry bands (matched
   by name and physical description, so copies of these bands in other sensors match too). S2 B10
   (cirrus, 1375 nm) has no range and is dropped, as in the official code. NAIP red, green and
   blue are treated as RGB (ranges 5, 3, 2): same kind of camera as the RGB pretraining data.
2. Other SAR bands map by polarization: co-pol to microwave_1 (VV; also HH), cross-pol to
   microwave_2 (VH; also HV). Mapping HH and HV this way is our choice; the model never saw them.
3. With blend="official", the bands the official configuration gives a blended range of its own
   (`OFFICIAL_BLENDED_RANGES`: Landsat-8/9 B2 -> 18 blue_2, B10 -> 17 thermal_infrared_1) blend
   that range's two sources, weighted by the distances from that range's centre.
4. Other optical and thermal bands are placed by their centre wavelength c (nm). If c lies in one or
   more ranges [lo, hi], the range whose centre (lo + hi) / 2 is nearest to c is used alone.
   Otherwise c falls in a gap and is blended from the nearest range centre below and the nearest
   above (beyond the ends of the table: the single nearest range). SAR ranges sit at their
   C-band wavelength, 5.5e7-5.6e7 nm, so a thermal band near 11000 nm blends B12 (14) and VV (15),
   like the official Landsat-8 TIR range 17. Distances tied on the same centre (VV and VH) go to
   the lower index. Blend weights from the distances d_i = |c - centre_i| (see `blend_weights`):
     "nearer"    inverse distance, w_i = (1/d_i) / sum_j (1/d_j): the nearer range dominates,
                 the intent of the paper. Default.
     "official"  w_i = d_i / sum_j d_j, the rule of the official code for its blended ranges 17 and
                 18; it favours the farther range (Landsat TIR ~= 0.9998 VV). Use it for parity
                 with the released checkpoints on unseen sensors.
   Under both rules a band centred exactly on a range's centre takes that range alone.
5. Bands of any other modality, or without a wavelength or polarization, raise ValueError.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from eofm import sensors

BLEND_MODES = ("nearer", "official")


@dataclasses.dataclass(frozen=True)
class SpectralRange:
    """One range with its own projection weights.

    Attributes:
        index: projection index in the weight files.
        key: name of the range in the official configuration.
        source: the band it was defined from.
        lo_nm: lower wavelength bound in nm.
        hi_nm: upper wavelength bound in nm.
        polarization: SAR polarization of microwave ranges, else None.
    """

    index: int
    key: str
    source: str
    lo_nm: float
    hi_nm: float
    polarization: str | None = None

    @property
    def center_nm(self) -> float:
        """Centre wavelength (lo + hi) / 2 in nm."""
        return (self.lo_nm + self.hi_nm) / 2

    def contains(self, wavelength_nm: float) -> bool:
        """Whether lo <= wavelength <= hi."""
        return self.lo_nm <= wavelength_nm <= self.hi_nm


# The optical ranges are the band centre -+ the full bandwidth as published (twice the FWHM
# interval; e.g. S2 B02 is really ~459-525 nm, SMARTIES issue #2). They are kept as they are
# because the released weights were trained with them. Microwave ranges are the C-band wavelength.
SPECTRAL_RANGES: tuple[SpectralRange, ...] = (
    SpectralRange(0, "aerosol", "S2 B01", 422, 463),
    SpectralRange(1, "blue_1", "S2 B02", 427, 558),
    SpectralRange(2, "blue_3", "RGB blue", 430, 545),
    SpectralRange(3, "green_1", "RGB green", 466, 620),
    SpectralRange(4, "green_2", "S2 B03", 524, 595),
    SpectralRange(5, "red_1", "RGB red", 590, 710),
    SpectralRange(6, "red_2", "S2 B04", 634, 696),
    SpectralRange(7, "red_edge_1", "S2 B05", 689, 719),
    SpectralRange(8, "red_edge_2", "S2 B06", 726, 755),
    SpectralRange(9, "near_infrared_1", "S2 B08", 728, 938),
    SpectralRange(10, "near_infrared_2", "S2 B07", 761, 802),
    SpectralRange(11, "near_infrared_3", "S2 B8A", 843, 886),
    SpectralRange(12, "short_wave_infrared_1", "S2 B09", 923, 964),
    SpectralRange(13, "short_wave_infrared_3", "S2 B11", 1516, 1704),
    SpectralRange(14, "short_wave_infrared_4", "S2 B12", 2002, 2376),
    SpectralRange(15, "microwave_1", "S1 VV", 5.5e7, 5.6e7, polarization="VV"),
    SpectralRange(16, "microwave_2", "S1 VH", 5.5e7, 5.6e7, polarization="VH"),
)
NUM_RANGES = len(SPECTRAL_RANGES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlendedRange(SpectralRange):
    """A range of the official configuration without weights of its own: its bands embed as a
    blend of the `sources` ranges, weighted by the official rule from this range's centre.

    Attributes:
        sources: indices of the two ranges it blends.
    """

    sources: tuple[int, int]


# The official configuration's blended ranges, both for Landsat-8 bands.
OFFICIAL_BLENDED_RANGES: tuple[BlendedRange, ...] = (
    BlendedRange(17, "thermal_infrared_1", "Landsat-8 B10", 10600, 11190, sources=(14, 15)),
    BlendedRange(18, "blue_2", "Landsat-8 B2", 452, 512, sources=(0, 1)),
)

# Polarization -> range of SAR bands. HH and HV (never seen in pretraining) follow VV and VH.
_SAR_RANGES = {"VV": 15, "HH": 15, "VH": 16, "HV": 16}

# Range of every band of the pretraining sensors (None: dropped), and of NAIP's visible bands.
_S2_RANGES = {
    "B01": 0,
    "B02": 1,
    "B03": 4,
    "B04": 6,
    "B05": 7,
    "B06": 8,
    "B07": 10,
    "B08": 9,
    "B8A": 11,
    "B09": 12,
    "B10": None,
    "B11": 13,
    "B12": 14,
}
_RGB_RANGES = {"red": 5, "green": 3, "blue": 2}
_PRETRAINED_RANGES: Mapping[str, Mapping[str, int | None]] = {
    "sentinel2_l1c": _S2_RANGES,
    "sentinel2_l2a": _S2_RANGES,
    "sentinel1_grd": {"VV": 15, "VH": 16},
    "rgb": _RGB_RANGES,
    "naip": _RGB_RANGES,
}
_THERMAL_INFRARED_1, _BLUE_2 = OFFICIAL_BLENDED_RANGES
# Registry bands with an official blended range (used with blend="official").
_OFFICIAL_BLENDED: Mapping[str, Mapping[str, BlendedRange]] = {
    "landsat8_oli_tirs": {"B2": _BLUE_2, "B10": _THERMAL_INFRARED_1},
}


@dataclasses.dataclass(frozen=True)
class BandProjection:
    """How one input band is embedded: a convex combination of range projections.

    Attributes:
        band: canonical band name.
        ranges: projection indices (1 or 2); empty for a dropped band.
        weights: weight of each range, summing to 1; empty for a dropped band.
    """

    band: str
    ranges: tuple[int, ...]
    weights: tuple[float, ...]

    def __post_init__(self):
        if len(self.ranges) != len(self.weights):
            raise ValueError(f"Band {self.band!r}: {self.ranges=} and {self.weights=} differ")
        if self.ranges and not math.isclose(sum(self.weights), 1.0, rel_tol=1e-9):
            raise ValueError(f"Band {self.band!r}: weights {self.weights} do not sum to 1")

    @property
    def dropped(self) -> bool:
        """Whether the band has no projection and is left out of the token."""
        return not self.ranges


def _band_key(band: sensors.Band) -> tuple:
    """What identifies a band physically: name, modality, wavelength or frequency, polarization."""
    return (
        band.name,
        band.modality,
        band.center_nm,
        band.bandwidth_nm,
        band.frequency_ghz,
        band.polarization,
    )


def _by_band_key(table: Mapping[str, Mapping[str, object]]) -> dict[tuple, object]:
    """`_band_key` -> value for the registry bands of a {sensor: {band name: value}} table."""
    return {
        _band_key(band): values[band.name]
        for sensor_name, values in table.items()
        for band in sensors.get_sensor(sensor_name).bands
        if band.name in values
    }


@functools.cache
def _pretrained_bands() -> dict[tuple, int | None]:
    """`_band_key` -> range for the registry bands listed in `_PRETRAINED_RANGES`."""
    return _by_band_key(_PRETRAINED_RANGES)


@functools.cache
def _official_blended_bands() -> dict[tuple, BlendedRange]:
    """`_band_key` -> official blended range for the registry bands of `_OFFICIAL_BLENDED`."""
    return _by_band_key(_OFFICIAL_BLENDED)


def _check_blend(blend: str) -> None:
    if blend not in BLEND_MODES:
        raise ValueError(f"Unknown blend mode {blend!r}; expected one of {BLEND_MODES}")


def blend_weights(
    center_nm: float, ranges: Sequence[int], blend: str = "nearer"
) -> tuple[float, ...]:
    """Weights of `ranges` for a band centred at `center_nm` (nm), by distance to range centres.

    "nearer": w_i proportional to 1 / d_i; "official": w_i proportional to d_i, with
    d_i = |center_nm - centre of range i|. Under both, a zero distance gives that range all the
    weight (a single range always takes it all).
    """
    _check_blend(blend)
    distances = [abs(center_nm - SPECTRAL_RANGES[i].center_nm) for i in ranges]
    if min(distances) == 0:
        scores = [float(d == 0) for d in distances]
    elif blend == "nearer":
        scores = [1 / d for d in distances]
    else:
        scores = distances
    total = sum(scores)
    return tuple(s / total for s in scores)


def _spectral_ranges(center_nm: float) -> tuple[int, ...]:
    """Range(s) of rule 3 for a band centred at `center_nm`: one inside, or two around a gap."""

    def nearest(candidates):
        return min(candidates, key=lambda r: (abs(center_nm - r.center_nm), r.index)).index

    inside = [r for r in SPECTRAL_RANGES if r.contains(center_nm)]
    if inside:
        return (nearest(inside),)
    below = [r for r in SPECTRAL_RANGES if r.center_nm < center_nm]
    above = [r for r in SPECTRAL_RANGES if r.center_nm > center_nm]
    if not below or not above:
        return (nearest(below or above),)
    return (nearest(below), nearest(above))


def assign_band(band: sensors.Band, *, blend: str = "nearer") -> BandProjection:
    """The projection(s) that embed `band`, by the rules in the module docstring."""
    _check_blend(blend)
    key = _band_key(band)
    pretrained = _pretrained_bands()
    if key in pretrained:
        index = pretrained[key]
        if index is None:
            return BandProjection(band.name, (), ())
        return BandProjection(band.name, (index,), (1.0,))
    if blend == "official" and key in _official_blended_bands():
        blended = _official_blended_bands()[key]
        weights = blend_weights(blended.center_nm, blended.sources, blend)
        return BandProjection(band.name, blended.sources, weights)

    if band.modality == "sar":
        polarization = (band.polarization or "").upper()
        if polarization not in _SAR_RANGES:
            raise ValueError(
                f"SAR band {band.name!r} has polarization {band.polarization!r}; expected one of"
                f" {sorted(_SAR_RANGES)}"
            )
        return BandProjection(band.name, (_SAR_RANGES[polarization],), (1.0,))

    if band.modality not in ("optical", "thermal"):
        raise ValueError(f"Band {band.name!r} has unknown modality {band.modality!r}")
    if band.center_nm is None:
        raise ValueError(f"Band {band.name!r} has no centre wavelength to place it in a range")
    ranges = _spectral_ranges(band.center_nm)
    return BandProjection(band.name, ranges, blend_weights(band.center_nm, ranges, blend))


def assign_sensor(
    sensor: str, bands: Sequence[str] | None = None, *, blend: str = "nearer"
) -> tuple[BandProjection, ...]:
    """`assign_band` for `bands` of the registry sensor `sensor` (default: all), in order."""
    _check_blend(blend)
    spec = sensors.get_sensor(sensor)
    names = spec.band_names if bands is None else spec.resolve(bands)
    return tuple(assign_band(spec.band(name), blend=blend) for name in names)


def projection_matrix(
    assignments: Sequence[BandProjection], num_ranges: int = NUM_RANGES
) -> np.ndarray:
    """float32 [num_bands, num_ranges] band -> range weights; all-zero rows for dropped bands."""
    matrix = np.zeros((len(assignments), num_ranges), np.float32)
    for row, assignment in enumerate(assignments):
        for index, weight in zip(assignment.ranges, assignment.weights, strict=True):
            if not 0 <= index < num_ranges:
                raise ValueError(
                    f"Band {assignment.band!r} uses range {index}, outside [0, {num_ranges})"
                )
            matrix[row, index] += weight
    return matrix
