"""The images a model reads: `data.sensors` of a source, with the optional `data.bands` selection.

data.sensors = ("s2", "s1")                    image keys fed to the model, in order
data.bands = {"s2": ("B02", "B03", "B04")}     per key, the bands kept (and their order)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain

from eofm.data.spec import SensorSpec, valid_key


def input_specs(data: Mapping[str, Any], specs: Mapping[str, SensorSpec]) -> dict[str, SensorSpec]:
    """SensorSpecs of `data.sensors` among a source's `specs`, after the `data.bands` selection."""
    keys = tuple(data["sensors"])
    missing = [k for k in keys if k not in specs]
    if missing:
        raise ValueError(f"data.sensors {missing} are not in the data, which has {list(specs)}")
    bands = dict(data.get("bands") or {})
    unknown = set(bands) - set(keys)
    if unknown:
        raise ValueError(
            f"data.bands names {sorted(unknown)}, which are not in data.sensors {keys}"
        )
    out = {}
    for k in keys:
        spec = specs[k]
        if k in bands:
            chosen = spec.sensor_info.resolve(tuple(bands[k]))
            absent = [b for b in chosen if b not in spec.bands]
            if absent:
                raise ValueError(f"data.bands[{k!r}]: {absent} are not among {spec.bands}")
            spec = SensorSpec(spec.sensor, chosen)
        out[k] = spec
    return out


def specs_to_json(specs: Mapping[str, SensorSpec]) -> dict[str, dict]:
    return {k: spec.to_json() for k, spec in specs.items()}


def specs_from_json(specs: Mapping[str, Mapping]) -> dict[str, SensorSpec]:
    return {k: SensorSpec.from_json(v) for k, v in specs.items()}


class SelectBands(grain.transforms.Map):
    """grain map: keeps the named bands of each image key (and of its validity mask), in order."""

    def __init__(self, specs: Mapping[str, SensorSpec], bands: Mapping[str, Sequence[str]]):
        self.index = {
            k: [specs[k].bands.index(b) for b in specs[k].sensor_info.resolve(tuple(v))]
            for k, v in bands.items()
        }

    def map(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        for key, idx in self.index.items():
            out[key] = sample[key][..., idx]
            out[valid_key(key)] = sample[valid_key(key)][..., idx]
        return out
