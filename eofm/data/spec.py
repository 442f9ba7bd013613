"""What a data source yields: sample layout and the static band metadata that travels with it.

A sample is a dict keyed by sample key (usually a short sensor tag):

    {"s2": f32[H, W, C], "s2_valid": bool[H, W, C], "s1": f32[H, W, 2], "s1_valid": ..., "label": ...}

Image arrays are float32, channels last, in the units of the sensor registry (`eofm.sensors`).
`<key>_valid` is False where the product has nodata or a non-finite value; those pixels hold 0 in the
image so that no NaN ever reaches a model. Which band sits in which channel is never guessed from an
index: every source carries a `SensorSpec` per sample key naming the registry sensor and its bands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from eofm import sensors as sensors_lib

VALID_SUFFIX = "_valid"


def valid_key(key: str) -> str:
    """Name of the validity mask that accompanies image `key`."""
    return key + VALID_SUFFIX


@dataclasses.dataclass(frozen=True)
class SensorSpec:
    """The registry sensor and the ordered band names of one image key of a sample."""

    sensor: str
    bands: tuple[str, ...]

    def __post_init__(self):
        # Resolves aliases to canonical names and fails early on unknown sensors or bands.
        resolved = sensors_lib.get_sensor(self.sensor).resolve(tuple(self.bands))
        object.__setattr__(self, "bands", tuple(resolved))

    @classmethod
    def full(cls, sensor: str) -> SensorSpec:
        """All bands of `sensor`, in registry order."""
        return cls(sensor, sensors_lib.get_sensor(sensor).band_names)

    @property
    def sensor_info(self) -> sensors_lib.Sensor:
        return sensors_lib.get_sensor(self.sensor).subset(self.bands)

    def to_json(self) -> dict:
        return {"sensor": self.sensor, "bands": list(self.bands)}

    @classmethod
    def from_json(cls, d: Mapping) -> SensorSpec:
        return cls(d["sensor"], tuple(d["bands"]))


def image_and_mask(
    array: np.ndarray, nodata: float | Sequence[float | None] | None, *, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Converts a raw [H, W, C] array to (f32 image with invalid pixels zeroed, bool validity mask).

    Invalid: equal to `nodata` (one value, or one per band; None = no nodata) or not finite. `where`
    names the origin for error messages.
    """
    if array.ndim != 3:
        raise ValueError(f"{where}: expected an [H, W, C] array, got shape {array.shape}")
    image = array.astype(np.float32, copy=True)
    valid = np.isfinite(image)
    per_band = nodata if isinstance(nodata, Sequence) else [nodata] * array.shape[-1]
    for c, value in enumerate(per_band):
        if value is not None and not np.isnan(value):
            valid[..., c] &= array[..., c] != value
    image[~valid] = 0.0
    return image, valid


def check_band_count(array: np.ndarray, spec: SensorSpec, *, where: str) -> None:
    """Raises a ValueError naming `where` and the expected bands when channel counts disagree."""
    if array.shape[-1] != len(spec.bands):
        raise ValueError(
            f"{where}: has {array.shape[-1]} bands but {spec.sensor} expects"
            f" {len(spec.bands)} ({', '.join(spec.bands)})"
        )


def specs_from_json(d: Mapping[str, Mapping]) -> dict[str, SensorSpec]:
    return {k: SensorSpec.from_json(v) for k, v in d.items()}


def specs_to_json(specs: Mapping[str, SensorSpec]) -> dict[str, dict]:
    return {k: v.to_json() for k, v in specs.items()}
