"""Registry of Earth-observation sensors and the static metadata of their bands.

Every image that enters eofm is described by a registry `Sensor` and an ordered subset of its
bands. A `Band` records what a channel measures (modality, centre wavelength and FWHM bandwidth or
SAR frequency and polarization), its ground sampling distance, the unit its values are in and the
fill value of the native product. Bands are looked up by canonical name ("B02", "B8A", "VV") or by
any alias ("B2", "blue"), case-insensitively, so configs may use whichever name is customary.

Units (`UNITS`):

    reflectance_1e4           reflectance x 10_000 (Sentinel-2 L1C/L2A, MOD09 land bands).
    reflectance               unitless reflectance, nominally in [0, 1] (Landsat 8-9 OLI, MODIS).
    dB                        SAR backscatter sigma0 in decibels (Sentinel-1).
    radiance                  at-sensor spectral radiance, W / (m^2 sr um).
    brightness_temperature_K  brightness temperature in kelvin (thermal bands).
    dn                        digital numbers without physical scale (Landsat 5/7 Level-1, NAIP).

`nodata` is the fill value of the native product in its own encoding (e.g. DN 0 for Sentinel-2
and Landsat, -28672 for MOD09); mask it before converting values to another scale.

`VALID_RANGES` gives, per unit, a generous interval of physically possible values
(`Band.valid_range`). A value outside it is no measurement but a fill value that a file does not
declare (e.g. -3.4e38 in a float GeoTIFF without a nodata tag) or corrupt data;
`eofm.data.validity` masks such pixels like nodata.

Sentinel-2 offset: products of processing baseline 04.00 and later (operational since 25 January
2022, also the reprocessed archive) store DN = 10_000 * reflectance + 1000 (BOA_ADD_OFFSET /
RADIO_ADD_OFFSET = -1000); older baselines store DN = 10_000 * reflectance. eofm keeps all
Sentinel-2 scenes on the older scale: `harmonize_s2_dn` subtracts `s2_offset_dn(baseline)`.

Users register their own sensors with `register_sensor`; `REGISTRY` is a read-only view.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import re
import types
from collections.abc import Mapping, Sequence

import numpy as np

UNITS = frozenset(
    {"reflectance_1e4", "reflectance", "dB", "radiance", "brightness_temperature_K", "dn"}
)
MODALITIES = frozenset({"optical", "sar", "thermal"})

# Inclusive (low, high) per unit, wide enough for every real product: reflectance from -0.5
# (over-corrected dark pixels) to 6.5 (the uint16 saturation value 65_535 of Sentinel-2 DN), SAR
# sigma0 within +-100 dB (real scenes: about -50 to +30), radiance up to three times the brightest
# solar spectral radiance, brightness temperatures from far below the coldest cloud top to far above
# saturated fire pixels, and DN in any 16-bit encoding.
VALID_RANGES = types.MappingProxyType(
    {
        "reflectance_1e4": (-5_000.0, 65_535.0),
        "reflectance": (-0.5, 6.5535),
        "dB": (-100.0, 100.0),
        "radiance": (-100.0, 2_000.0),
        "brightness_temperature_K": (50.0, 1_000.0),
        "dn": (-32_768.0, 65_535.0),
    }
)

_SPEED_OF_LIGHT_M_S = 299_792_458.0


class UnknownBandError(KeyError, ValueError):
    """A band name that a sensor neither has nor aliases."""

    def __str__(self):  # KeyError would show the repr of the message.
        return str(self.args[0]) if self.args else ""


class UnknownSensorError(KeyError, ValueError):
    """A sensor name that is not in the registry."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class Band:
    """Static description of one band (channel) of a sensor.

    Attributes:
        name: canonical name, e.g. "B02", "B8A", "VV", "red".
        modality: "optical", "sar" or "thermal".
        gsd_m: ground sampling distance in metres; NaN when unknown.
        unit: unit of the values, one of `UNITS`.
        center_nm: centre wavelength in nm (optical and thermal bands).
        bandwidth_nm: FWHM bandwidth in nm (optical and thermal bands).
        frequency_ghz: centre frequency in GHz (SAR bands).
        polarization: transmit/receive polarization of SAR bands, e.g. "VV".
        nodata: fill value of the native product, if it has one.
        aliases: other names accepted on lookup.
        description: short human-readable description, e.g. "red edge 1".
    """

    name: str
    modality: str
    gsd_m: float
    unit: str
    center_nm: float | None = None
    bandwidth_nm: float | None = None
    frequency_ghz: float | None = None
    polarization: str | None = None
    nodata: float | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def valid_range(self) -> tuple[float, float]:
        """(low, high), inclusive: the physically possible values of this band's unit."""
        return VALID_RANGES[self.unit]

    @property
    def wavelength_range_nm(self) -> tuple[float, float] | None:
        """(low, high) = centre -+ FWHM / 2 in nm; for SAR the wavelength c / f as (x, x)."""
        if self.center_nm is not None and self.bandwidth_nm is not None:
            half = self.bandwidth_nm / 2
            return (self.center_nm - half, self.center_nm + half)
        if self.frequency_ghz is not None:
            wavelength_nm = _SPEED_OF_LIGHT_M_S / self.frequency_ghz  # (m/s) / GHz = nm.
            return (wavelength_nm, wavelength_nm)
        return None


@dataclasses.dataclass(frozen=True)
class Sensor:
    """An ordered tuple of bands under a registry name.

    Band lookups accept canonical names and aliases, case-insensitively. Subsets keep the sensor
    name, so `get_sensor(s.name)` always finds the full sensor that a subset came from.
    """

    name: str
    bands: tuple[Band, ...]
    description: str = ""
    citation: str = ""

    @property
    def band_names(self) -> tuple[str, ...]:
        """Canonical band names in order."""
        return tuple(b.name for b in self.bands)

    @functools.cached_property
    def _index_by_key(self) -> dict[str, int]:
        """Lower-cased names and aliases -> band index; the first band wins on clashes."""
        index = {}
        for i, b in enumerate(self.bands):
            for key in (b.name, *b.aliases):
                index.setdefault(key.lower(), i)
        return index

    def band_index(self, name: str) -> int:
        """Position of the band called `name` (canonical or alias, any case)."""
        try:
            return self._index_by_key[name.lower()]
        except (KeyError, AttributeError):
            raise UnknownBandError(
                f"Sensor {self.name!r} has no band {name!r}; valid names:"
                f" {', '.join(self.band_names)} (aliases accepted, case-insensitive)"
            ) from None

    def band(self, name: str) -> Band:
        """The band called `name` (canonical or alias, any case)."""
        return self.bands[self.band_index(name)]

    def resolve(self, names: Sequence[str]) -> tuple[str, ...]:
        """Canonical names of `names`, in the given order."""
        if isinstance(names, str):
            raise TypeError(f"Expected a sequence of band names, got the string {names!r}")
        return tuple(self.band(n).name for n in names)

    def subset(self, names: Sequence[str]) -> Sensor:
        """This sensor restricted to `names`, in the requested order."""
        resolved = self.resolve(names)
        duplicates = sorted({n for n in resolved if resolved.count(n) > 1})
        if duplicates:
            raise ValueError(f"Duplicate bands in subset of {self.name!r}: {', '.join(duplicates)}")
        return dataclasses.replace(self, bands=tuple(self.band(n) for n in resolved))

    def __len__(self) -> int:
        return len(self.bands)


# ------------------------------------------------------------------------------------------------
# Registry.
# ------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Sensor] = {}
REGISTRY: Mapping[str, Sensor] = types.MappingProxyType(_REGISTRY)


def _is_positive(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and x > 0


def _is_nan(x) -> bool:
    return isinstance(x, numbers.Real) and math.isnan(x)


def _validate_band(band: Band, where: str) -> None:
    """Raises ValueError when `band` is malformed; `where` prefixes the message."""
    if not isinstance(band.name, str) or not band.name:
        raise ValueError(f"{where}: band name must be a non-empty string, got {band.name!r}")
    where = f"{where}, band {band.name!r}"
    if band.modality not in MODALITIES:
        raise ValueError(f"{where}: modality {band.modality!r} is not one of {sorted(MODALITIES)}")
    if band.unit not in UNITS:
        raise ValueError(f"{where}: unit {band.unit!r} is not one of {sorted(UNITS)}")
    if not (_is_positive(band.gsd_m) or _is_nan(band.gsd_m)):
        raise ValueError(f"{where}: gsd_m must be positive (or NaN if unknown), got {band.gsd_m}")
    if band.modality == "sar":
        if not _is_positive(band.frequency_ghz):
            raise ValueError(f"{where}: SAR bands need a positive frequency_ghz")
    else:
        for field in ("center_nm", "bandwidth_nm"):
            if not _is_positive(getattr(band, field)):
                raise ValueError(f"{where}: {band.modality} bands need a positive {field}")
    if isinstance(band.aliases, str):
        raise ValueError(f"{where}: aliases must be a tuple of names, not a string")


def _validate_sensor(sensor: Sensor) -> None:
    """Raises ValueError when `sensor` is malformed (see `register_sensor`)."""
    if not isinstance(sensor, Sensor):
        raise TypeError(f"Expected a Sensor, got {type(sensor).__name__}")
    if not isinstance(sensor.name, str) or not sensor.name:
        raise ValueError(f"Sensor name must be a non-empty string, got {sensor.name!r}")
    where = f"Sensor {sensor.name!r}"
    if not sensor.bands:
        raise ValueError(f"{where}: has no bands")
    owner: dict[str, str] = {}
    for band in sensor.bands:
        _validate_band(band, where)
        # An alias that equals its own band's name up to case is harmless, hence the set.
        for key in {k.lower() for k in (band.name, *band.aliases)}:
            if key in owner:
                raise ValueError(
                    f"{where}: name or alias {key!r} of band {band.name!r} is also used by band"
                    f" {owner[key]!r} (names are compared case-insensitively)"
                )
            owner[key] = band.name


def covers_by_wavelength(data: Band, slot: Band) -> bool:
    """Whether band `data` can stand in for band `slot` of another sensor: the same modality
    (optical, thermal) and either band's centre wavelength within the other's range."""
    ra, rb = data.wavelength_range_nm, slot.wavelength_range_nm
    if data.modality != slot.modality or ra is None or rb is None:
        return False
    return ra[0] <= slot.center_nm <= ra[1] or rb[0] <= data.center_nm <= rb[1]


def wavelength_match(have: Sequence[Band], slots: Sequence[Band]) -> list[int | None]:
    """For each of `slots` (fixed inputs, e.g. a model's), the index of the band of `have` that
    stands in for it, or None. A band covers the slots of `covers_by_wavelength` but fills only
    the one whose centre is nearest its own (Landsat-5's broad thermal B6 fills MODIS band 31,
    not 32 too); a slot several bands fill takes the one with the nearest centre (Sentinel-2 B8A,
    not B08, for MODIS band 2). Names are not compared."""
    distance = lambda a, b: abs(a.center_nm - b.center_nm)
    filled: dict[int, list[int]] = {}
    for i, band in enumerate(have):
        covered = [j for j, slot in enumerate(slots) if covers_by_wavelength(band, slot)]
        if covered:
            nearest = min(covered, key=lambda j: distance(band, slots[j]))
            filled.setdefault(nearest, []).append(i)
    return [
        min(filled[j], key=lambda i: distance(have[i], slot)) if j in filled else None
        for j, slot in enumerate(slots)
    ]


def register_sensor(sensor: Sensor) -> None:
    """Adds `sensor` to the registry under `sensor.name`.

    Raises ValueError if the name is taken or the sensor is malformed: unknown modality or unit,
    non-positive GSD, names or aliases used twice within the sensor (case-insensitively), optical
    or thermal bands without `center_nm` and `bandwidth_nm`, SAR bands without `frequency_ghz`.
    """
    _validate_sensor(sensor)
    if sensor.name in _REGISTRY:
        raise ValueError(f"A sensor named {sensor.name!r} is already registered")
    _REGISTRY[sensor.name] = sensor


def get_sensor(name: str) -> Sensor:
    """The registered sensor called `name`; raises UnknownSensorError if there is none."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    by_lower = {k.lower(): k for k in _REGISTRY}
    if isinstance(name, str) and name.lower() in by_lower:
        return _REGISTRY[by_lower[name.lower()]]
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f" Did you mean {by_lower[close[0]]!r}?" if close else ""
    raise UnknownSensorError(
        f"Unknown sensor {name!r}.{hint} Registered sensors: {', '.join(sorted(_REGISTRY))}"
    )


# ------------------------------------------------------------------------------------------------
# Sentinel-2 processing baseline.
# ------------------------------------------------------------------------------------------------

S2_BASELINE_OFFSET_DN = 1000
_S2_OFFSET_SINCE_BASELINE = 4.0
_S2_UNKNOWN_BASELINE = 99.99  # "N9999": reprocessed or unknown baseline.


def parse_s2_processing_baseline(value: str) -> float | None:
    """Processing baseline as a number, e.g. 4.0, from any of its usual spellings.

    Accepts the metadata form "04.00" (or "4.00"), the product-name token "N0400" and full product
    ids such as "S2B_MSIL1C_20200604T054639_N0209_R048_T43RCP_20200604T083537" (-> 2.09). Returns
    None for the placeholder "N9999" / "99.99" that marks a reprocessed or unknown baseline.
    Raises ValueError if `value` has none of these forms.
    """
    text = str(value).strip()
    token = re.fullmatch(r"N(\d{4})", text, re.IGNORECASE) or re.search(
        r"_N(\d{4})(?=[_.]|$)", text, re.IGNORECASE
    )
    if token:
        baseline = int(token.group(1)) / 100
    elif re.fullmatch(r"\d{1,2}(\.\d{1,2})?", text):
        baseline = float(text)
    else:
        raise ValueError(f"Cannot parse a Sentinel-2 processing baseline from {value!r}")
    return None if baseline == _S2_UNKNOWN_BASELINE else baseline


def s2_offset_dn(processing_baseline: float | str | None) -> int:
    """DN offset of a Sentinel-2 product: 1000 for baseline >= 04.00, else 0.

    Strings are parsed with `parse_s2_processing_baseline`. An unknown baseline (None, "N9999")
    gives 0; callers that cannot tell the baseline should derive it from the product date.
    """
    if isinstance(processing_baseline, str):
        processing_baseline = parse_s2_processing_baseline(processing_baseline)
    if processing_baseline is None:
        return 0
    return S2_BASELINE_OFFSET_DN if processing_baseline >= _S2_OFFSET_SINCE_BASELINE else 0


def harmonize_s2_dn(dn: np.ndarray, processing_baseline: float | str | None) -> np.ndarray:
    """float32 `dn - s2_offset_dn(processing_baseline)`: one scale for pre- and post-2022 scenes.

    Values are not clipped, so dark pixels of new scenes may become negative. Compute the nodata
    mask (DN 0) before harmonizing: afterwards fill pixels of new scenes read -1000.
    """
    return np.asarray(dn, dtype=np.float32) - np.float32(s2_offset_dn(processing_baseline))


# ------------------------------------------------------------------------------------------------
# Built-in sensors. One line per band; helpers fill in what a sensor's bands have in common.
# ------------------------------------------------------------------------------------------------


def _spectral(
    name,
    center_nm,
    bandwidth_nm,
    gsd_m,
    description,
    *aliases,
    unit,
    modality="optical",
    nodata=None,
) -> Band:
    """An optical or thermal band given by centre wavelength and FWHM bandwidth."""
    return Band(
        name,
        modality,
        float(gsd_m),
        unit,
        center_nm=float(center_nm),
        bandwidth_nm=float(bandwidth_nm),
        nodata=nodata,
        aliases=tuple(aliases),
        description=description,
    )


def _from_range(name, low_nm, high_nm, gsd_m, description, *aliases, **kwargs) -> Band:
    """An optical or thermal band given by its published lower and upper band edges in nm."""
    return _spectral(
        name, (low_nm + high_nm) / 2, high_nm - low_nm, gsd_m, description, *aliases, **kwargs
    )


# Sentinel-2 MSI, Sentinel-2A centre wavelengths and FWHM bandwidths (ESA spectral response
# functions). L1C: top-of-atmosphere, L2A: bottom-of-atmosphere reflectance; both x 10_000.
_s2 = functools.partial(_spectral, unit="reflectance_1e4", nodata=0.0)
_S2_L1C_BANDS = (
    _s2("B01", 442.7, 21, 60, "coastal aerosol", "B1", "coastal"),
    _s2("B02", 492.4, 66, 10, "blue", "B2", "blue"),
    _s2("B03", 559.8, 36, 10, "green", "B3", "green"),
    _s2("B04", 664.6, 31, 10, "red", "B4", "red"),
    _s2("B05", 704.1, 15, 20, "red edge 1", "B5", "rededge1", "rededge"),
    _s2("B06", 740.5, 15, 20, "red edge 2", "B6", "rededge2"),
    _s2("B07", 782.8, 20, 20, "red edge 3", "B7", "rededge3"),
    _s2("B08", 832.8, 106, 10, "near infrared", "B8", "nir"),
    _s2("B8A", 864.7, 21, 20, "narrow near infrared", "nir08"),
    _s2("B09", 945.1, 20, 60, "water vapour", "B9", "water_vapor", "nir09"),
    _s2("B10", 1373.5, 31, 60, "cirrus", "cirrus"),
    _s2("B11", 1613.7, 91, 20, "shortwave infrared 1", "swir16", "swir1"),
    _s2("B12", 2202.4, 175, 20, "shortwave infrared 2", "swir22", "swir2"),
)
_S2_CITATION = "ESA Sentinel-2 MSI User Handbook; Sentinel-2A spectral response functions."


def _s1(polarization, description) -> Band:
    """Sentinel-1 C-SAR, Level-1 GRD (IW mode, 10 m pixel spacing), sigma0 in dB."""
    return Band(
        polarization,
        "sar",
        10.0,
        "dB",
        frequency_ghz=5.405,
        polarization=polarization,
        aliases=(polarization.lower(),),
        description=description,
    )


_S1_GRD_BANDS = (
    _s1("VV", "co-polarized backscatter"),
    _s1("VH", "cross-polarized backscatter"),
)

# Landsat 4-5 TM and Landsat 7 ETM+ (USGS band designations). Reflective bands are Level-1 DN,
# uncalibrated; the thermal band is brightness temperature (Level-1 DN converted with the MTL
# constants, or Collection-2 surface temperature). Landsat products use 0 as fill.
_tm = functools.partial(_from_range, unit="dn", nodata=0.0)
_tm_thermal = functools.partial(
    _from_range, unit="brightness_temperature_K", modality="thermal", nodata=0.0
)
_LANDSAT5_TM_BANDS = (
    _tm("B1", 450, 520, 30, "blue", "blue"),
    _tm("B2", 520, 600, 30, "green", "green"),
    _tm("B3", 630, 690, 30, "red", "red"),
    _tm("B4", 760, 900, 30, "near infrared", "nir", "nir08"),
    _tm("B5", 1550, 1750, 30, "shortwave infrared 1", "swir16", "swir1"),
    _tm_thermal("B6", 10400, 12500, 120, "thermal infrared", "lwir", "thermal", "tir"),
    _tm("B7", 2080, 2350, 30, "shortwave infrared 2", "swir22", "swir2"),
)
_LANDSAT7_ETM_BANDS = (
    _tm("B1", 450, 520, 30, "blue", "blue"),
    _tm("B2", 520, 600, 30, "green", "green"),
    _tm("B3", 630, 690, 30, "red", "red"),
    _tm("B4", 770, 900, 30, "near infrared", "nir", "nir08"),
    _tm("B5", 1550, 1750, 30, "shortwave infrared 1", "swir16", "swir1"),
    _tm_thermal("B6", 10400, 12500, 60, "thermal infrared", "lwir", "thermal", "tir"),
    _tm("B7", 2090, 2350, 30, "shortwave infrared 2", "swir22", "swir2"),
    _tm("B8", 520, 900, 15, "panchromatic", "pan"),
)

# Landsat 8-9 OLI/TIRS (USGS band designations). OLI bands are unitless reflectance: Collection-2
# Level-2 surface reflectance after the USGS scale and offset (DN * 2.75e-5 - 0.2) for B1-B7; B8
# and B9 exist only at Level-1 and are TOA reflectance from the MTL rescaling factors. TIRS bands
# are brightness temperature. `nodata` is the fill DN (0) of the native integer product.
_oli = functools.partial(_from_range, unit="reflectance", nodata=0.0)
_tirs = functools.partial(
    _from_range, unit="brightness_temperature_K", modality="thermal", nodata=0.0
)
_LANDSAT_OLI_TIRS_BANDS = (
    _oli("B1", 430, 450, 30, "coastal aerosol", "coastal"),
    _oli("B2", 450, 510, 30, "blue", "blue"),
    _oli("B3", 530, 590, 30, "green", "green"),
    _oli("B4", 640, 670, 30, "red", "red"),
    _oli("B5", 850, 880, 30, "near infrared", "nir", "nir08"),
    _oli("B6", 1570, 1650, 30, "shortwave infrared 1", "swir16", "swir1"),
    _oli("B7", 2110, 2290, 30, "shortwave infrared 2", "swir22", "swir2"),
    _oli("B8", 500, 680, 15, "panchromatic", "pan"),
    _oli("B9", 1360, 1380, 30, "cirrus", "cirrus"),
    _tirs("B10", 10600, 11190, 100, "thermal infrared 1", "lwir11", "tirs1"),
    _tirs("B11", 11500, 12510, 100, "thermal infrared 2", "lwir12", "tirs2"),
)


def _modis_refl(name, low_nm, high_nm, description, *aliases):
    """A MODIS reflective band as TOA reflectance, at the 1 km of the Level-1B product."""
    return _from_range(name, low_nm, high_nm, 1000, description, *aliases, unit="reflectance")


def _modis_emis(name, low_nm, high_nm, description, *aliases):
    """A MODIS emissive band as brightness temperature, at 1 km."""
    return _from_range(
        name,
        low_nm,
        high_nm,
        1000,
        description,
        *aliases,
        unit="brightness_temperature_K",
        modality="thermal",
    )


# MODIS Level-1B bands in the order SatVision-TOA uses them, all at 1 km (natively bands 1-2 are
# 250 m and bands 3-7 500 m).
_MODIS_TOA_BANDS = (
    _modis_refl("b01", 620, 670, "red", "red"),
    _modis_refl("b02", 841, 876, "near infrared", "nir"),
    _modis_refl("b03", 459, 479, "blue", "blue"),
    _modis_refl("b06", 1628, 1652, "shortwave infrared 1.6 um", "swir16"),
    _modis_refl("b07", 2105, 2155, "shortwave infrared 2.1 um", "swir22"),
    _modis_emis("b21", 3929, 3989, "surface / fire temperature 3.96 um"),
    _modis_refl("b26", 1360, 1390, "cirrus", "cirrus"),
    _modis_emis("b27", 6535, 6895, "water vapour 6.7 um"),
    _modis_emis("b28", 7175, 7475, "water vapour 7.3 um"),
    _modis_emis("b29", 8400, 8700, "cloud properties 8.5 um"),
    _modis_emis("b30", 9580, 9880, "ozone 9.7 um"),
    _modis_emis("b31", 10780, 11280, "surface / cloud temperature 11 um", "lwir11"),
    _modis_emis("b32", 11770, 12270, "surface / cloud temperature 12 um", "lwir12"),
    _modis_emis("b33", 13185, 13485, "cloud top altitude 13.3 um"),
)

# MOD09 land surface reflectance bands 1-7 at 500 m (MOD09GA; bands 1-2 are 250 m natively).
_mod09 = functools.partial(_from_range, unit="reflectance_1e4", nodata=-28672.0)
_MODIS_LAND_BANDS = (
    _mod09("b01", 620, 670, 500, "red", "red"),
    _mod09("b02", 841, 876, 500, "near infrared", "nir"),
    _mod09("b03", 459, 479, 500, "blue", "blue"),
    _mod09("b04", 545, 565, 500, "green", "green"),
    _mod09("b05", 1230, 1250, 500, "near infrared 1.24 um"),
    _mod09("b06", 1628, 1652, 500, "shortwave infrared 1.6 um", "swir16"),
    _mod09("b07", 2105, 2155, 500, "shortwave infrared 2.1 um", "swir22"),
)

# NAIP 4-band aerial imagery, 8-bit DN. The camera (Leica ADS40/80/100, others) differs between
# states and years, so centres and bandwidths are representative, not exact.
_naip = functools.partial(_spectral, unit="dn")
_NAIP_BANDS = (
    _naip("red", 635, 50, 0.6, "red", "R"),
    _naip("green", 555, 60, 0.6, "green", "G"),
    _naip("blue", 470, 60, 0.6, "blue", "B"),
    _naip("nir", 860, 55, 0.6, "near infrared", "N"),
)

# Generic 8-bit RGB imagery (photos, web tiles) of unknown resolution: nominal bands, GSD NaN.
_rgb = functools.partial(_spectral, unit="dn")
_RGB_BANDS = (
    _rgb("red", 640, 100, math.nan, "red", "R"),
    _rgb("green", 550, 100, math.nan, "green", "G"),
    _rgb("blue", 470, 100, math.nan, "blue", "B"),
)

_USGS_LANDSAT = "USGS, Landsat band designations (usgs.gov)."


def _as_toa_reflectance(bands: tuple[Band, ...]) -> tuple[Band, ...]:
    """Level-1 DN bands as top-of-atmosphere reflectance (unit "reflectance", a fraction, no fill
    value); thermal bands stay brightness temperature."""
    return tuple(
        dataclasses.replace(
            b, unit=b.unit if b.modality == "thermal" else "reflectance", nodata=None
        )
        for b in bands
    )


_MODIS_SPECS = "NASA MODIS specifications (modis.gsfc.nasa.gov)."

for _sensor in (
    Sensor(
        "sentinel2_l1c",
        _S2_L1C_BANDS,
        "Sentinel-2 MSI Level-1C, top-of-atmosphere reflectance x 10_000.",
        _S2_CITATION,
    ),
    Sensor(
        "sentinel2_l2a",
        tuple(b for b in _S2_L1C_BANDS if b.name != "B10"),
        "Sentinel-2 MSI Level-2A, bottom-of-atmosphere reflectance x 10_000 (no B10).",
        _S2_CITATION,
    ),
    Sensor(
        "sentinel1_grd",
        _S1_GRD_BANDS,
        "Sentinel-1 C-band SAR, Level-1 GRD (IW), sigma0 in dB.",
        "ESA Sentinel-1 SAR User Guide.",
    ),
    Sensor(
        "landsat5_tm",
        _LANDSAT5_TM_BANDS,
        "Landsat 4-5 Thematic Mapper, Level-1 DN; B6 as brightness temperature.",
        _USGS_LANDSAT,
    ),
    Sensor(
        "landsat7_etm",
        _LANDSAT7_ETM_BANDS,
        "Landsat 7 Enhanced Thematic Mapper Plus, Level-1 DN; B6 as brightness temperature.",
        _USGS_LANDSAT,
    ),
    Sensor(
        "landsat5_tm_toa",
        _as_toa_reflectance(_LANDSAT5_TM_BANDS),
        "Landsat 4-5 Thematic Mapper, Level-1 top-of-atmosphere reflectance (a fraction); B6 as"
        " brightness temperature.",
        _USGS_LANDSAT,
    ),
    Sensor(
        "landsat7_etm_toa",
        _as_toa_reflectance(_LANDSAT7_ETM_BANDS),
        "Landsat 7 Enhanced Thematic Mapper Plus, Level-1 top-of-atmosphere reflectance (a"
        " fraction); B6 as brightness temperature.",
        _USGS_LANDSAT,
    ),
    Sensor(
        "landsat8_oli_tirs",
        _LANDSAT_OLI_TIRS_BANDS,
        "Landsat 8 OLI/TIRS, Collection-2 reflectance and brightness temperature.",
        _USGS_LANDSAT,
    ),
    Sensor(
        "landsat9_oli_tirs",
        _LANDSAT_OLI_TIRS_BANDS,
        "Landsat 9 OLI-2/TIRS-2, Collection-2 reflectance and brightness temperature.",
        _USGS_LANDSAT,
    ),
    Sensor(
        "modis_toa",
        _MODIS_TOA_BANDS,
        "MODIS Level-1B at 1 km: TOA reflectance and brightness temperature, band order of"
        " SatVision-TOA.",
        _MODIS_SPECS + " Band selection: SatVision-TOA (Spradlin et al., 2024).",
    ),
    Sensor(
        "modis_land",
        _MODIS_LAND_BANDS,
        "MODIS MOD09GA land surface reflectance x 10_000, bands 1-7 at 500 m.",
        _MODIS_SPECS + " MOD09 user guide.",
    ),
    Sensor(
        "naip",
        _NAIP_BANDS,
        "USDA NAIP 4-band aerial imagery, 8-bit DN, 0.6 m.",
        "USDA Farm Service Agency, National Agriculture Imagery Program.",
    ),
    Sensor("rgb", _RGB_BANDS, "Generic 8-bit RGB imagery of unknown resolution."),
):
    register_sensor(_sensor)
del _sensor
