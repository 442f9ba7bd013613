"""The model-family protocol: what `eofm/models/<name>.py` provides, and how generic code finds it.

A family is one module (or package) `eofm.models.<name>`, imported by `config.model_name` (a dotted
name imports a module kept elsewhere). It provides, in one place:

  Config          frozen dataclass of hyper-parameters; `config.model` holds its fields
  VARIANTS        {variant: {field: value}}: `tiny` for CPU seconds, then the paper's sizes
  DATA_FIELDS     Config fields that the data set (e.g. input channels), absent from config.model
  from_data(inputs, image_size) -> {field: value}
                  the input contract: checks the sensors and bands (a named error otherwise) and
                  returns the DATA_FIELDS values
  Model           nnx.Module built as Model(cfg, inputs, *, rngs), with
    loss(batch, rng) -> (loss f32[], {name: f32[]})
                  the pretraining objective on a batch {input key: f32[B, S, S, C]} (normalised)
    flops_per_example(image_size) -> float
                  forward + backward matmul FLOPs of one training example (for MFU)
    features(images, spec, taps=None) -> {"pooled": [B, D], "levels": [[B, h_i, w_i, D_i], ...]}
                  the encoder interface of every downstream task, for images f32[B, S, S, C] of
                  any `SensorSpec` it can read; levels may differ in stride (S / h_i) and width;
                  `taps` picks blocks of a plain transformer stack (None = the family default)
    feature_definition
                  str class attribute, one or two sentences: what `pooled` and `levels` are
                  (which token, which norm, which blocks), as evaluation reports state it
    missing_bands(spec) -> tuple of band names
                  bands the encoder wanted that `spec` lacks (zero-filled); raises ValueError
                  naming them when the encoder cannot read the data at all
    stand_in_bands(spec) -> {trained band: data band}   (optional)
                  for an encoder that reads bands by name, the bands of `spec` of another name
                  that stand in for trained ones by wavelength (`stand_ins`)
    ENCODING_PARAMS tuple of path prefixes of the parameters that encoding reads (pooling too)
    num_layers, layer_of(path) -> int
                  layer ids for layer-wise lr decay: embeddings 0 ... num_layers for what follows
                  the last block
  adapt_param(path, value, shape) -> array   (optional)
                  a saved parameter of another shape made to fit (e.g. position tables)
  host_transforms(cfg, inputs) -> (transforms, keys)   (optional)
                  grain transforms that pretraining runs on the host after cropping and
                  normalisation, and the batch keys they add for `loss` (RoMA's rotations)

Its weight importer lives in `eofm/convert/<name>.py`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

import jax.numpy as jnp
import ml_collections

from eofm import sensors

_PROTOCOL = ("Config", "VARIANTS", "DATA_FIELDS", "from_data", "Model")


def available() -> list[str]:
    """Names of the family modules in `eofm.models`."""
    import eofm.models

    names = []
    for info in pkgutil.iter_modules(eofm.models.__path__):
        module = importlib.import_module(f"eofm.models.{info.name}")
        if all(hasattr(module, attr) for attr in _PROTOCOL):
            names.append(info.name)
    return sorted(names)


def get(name: str) -> ModuleType:
    """The family module `eofm.models.<name>`, or the module `name` itself when it is dotted (a
    family kept outside eofm, e.g. "mylab.models.foo"); an error lists the families when it is not
    one."""
    module_name = name if "." in name else f"eofm.models.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        module = None
    missing = [attr for attr in _PROTOCOL if not hasattr(module, attr)]
    if module is None or missing:
        raise ValueError(f"unknown model_name {name!r}; model families: {available()}")
    return module


def config_fields(family: ModuleType, variant: str) -> ml_collections.ConfigDict:
    """`config.model` of a variant: every Config field but the DATA_FIELDS (dtypes as names)."""
    if variant not in family.VARIANTS:
        raise ValueError(
            f"unknown variant {variant!r} of {family.__name__}; expected one of"
            f" {sorted(family.VARIANTS)}"
        )
    values = {}
    for field in dataclasses.fields(family.Config):
        if field.name in family.DATA_FIELDS or not field.init:
            continue
        if field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
    values.update(family.VARIANTS[variant])
    undefined = [f.name for f in dataclasses.fields(family.Config) if f.name not in values]
    undefined = [n for n in undefined if n not in family.DATA_FIELDS]
    if undefined:
        raise ValueError(f"{family.__name__} variant {variant!r} leaves {undefined} unset")
    return ml_collections.ConfigDict({k: _to_config(v) for k, v in values.items()})


def make_config(family: ModuleType, model: Mapping[str, Any], inputs, image_size: int) -> Any:
    """The family's Config from `config.model` fields plus what `from_data(inputs, image_size)`
    sets; a field the Config does not have is an error naming it."""
    names = {f.name for f in dataclasses.fields(family.Config)}
    fields = dict(model)
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"config.model has {unknown}, which {family.__name__}.Config lacks")
    given_by_data = sorted(set(fields) & set(family.DATA_FIELDS))
    if given_by_data:
        raise ValueError(f"config.model sets {given_by_data}, which the data determine")
    fields = {k: _from_config(k, v) for k, v in fields.items()}
    return family.Config(**fields, **family.from_data(dict(inputs), image_size))


def model_builder(config: ml_collections.ConfigDict, inputs) -> Callable[..., Any]:
    """rngs -> the model of `config.model_name` with `config.model` fields, for images `inputs`
    ({key: SensorSpec}) of `config.data.image_size` pixels."""
    module = get(config.model_name)
    cfg = make_config(module, config.model, inputs, config.data.image_size)
    inputs = dict(inputs)
    return lambda rngs: module.Model(cfg, inputs, rngs=rngs)


def host_transforms(config: ml_collections.ConfigDict, inputs) -> tuple[list, tuple[str, ...]]:
    """The pretraining host transforms of `config.model_name`'s family and the batch keys they
    add (none when the family defines no `host_transforms`)."""
    module = get(config.model_name)
    if not hasattr(module, "host_transforms"):
        return [], ()
    cfg = make_config(module, config.model, inputs, config.data.image_size)
    transforms, keys = module.host_transforms(cfg, dict(inputs))
    return list(transforms), tuple(keys)


def _to_config(value: Any) -> Any:
    if isinstance(value, type) or isinstance(value, jnp.dtype):
        return jnp.dtype(value).name
    return value


def _from_config(name: str, value: Any) -> Any:
    if name.endswith("dtype"):
        return jnp.dtype(value)
    if isinstance(value, list):
        return tuple(value)
    return value


# ---- shared pieces of the encoder interface for plain transformer stacks ---------------------


def default_taps(depth: int) -> tuple[int, ...]:
    """Four blocks at 1/3, 1/2, 2/3 and the end of the depth ([3, 5, 7, 11] for 12 blocks, the
    PANGAEA choice)."""
    return tuple(max(0, round(depth * f) - 1) for f in (1 / 3, 1 / 2, 2 / 3, 1))


def block_layer_of(depth: int, embeddings: str, stack: str = "") -> Callable[[str], int]:
    """Layer ids of the transformer stack at `<stack>blocks/<i>/`: embeddings (paths matching the
    `embeddings` regex) 0, block i -> i + 1, everything else (final norm, pooling, other stacks
    such as a decoder) -> depth + 1."""
    block = re.compile(rf"^{re.escape(stack)}blocks/(\d+)/")
    embedding = re.compile(embeddings)

    def layer_of(path: str) -> int:
        if m := block.search(path):
            return int(m.group(1)) + 1
        if embedding.search(path):
            return 0
        return depth + 1

    return layer_of


def same_band(a: sensors.Band, b: sensors.Band) -> bool:
    """Whether registry bands `a` and `b` measure the same thing: the same name and overlapping
    wavelength ranges (SAR: the same wavelength). A name alone is ambiguous across sensors:
    Landsat-8 B10 is thermal, Sentinel-2 B10 cirrus; Landsat-5 B1 is blue, Landsat-8 B1 aerosol."""
    if a.name.lower() != b.name.lower():
        return False
    ra, rb = a.wavelength_range_nm, b.wavelength_range_nm
    if ra is None or rb is None:
        return ra is rb
    return ra[0] <= rb[1] and rb[0] <= ra[1]


def band_indices(spec, wanted) -> list[int | None]:
    """For each band of SensorSpec `wanted` (what a model was trained on), its channel in images
    of SensorSpec `spec`, or None when the data lack it.

    Bands are matched by name first (`same_band`); the bands left on both sides are then matched
    by wavelength (`sensors.wavelength_match`: a data band fills the slot it covers whose centre
    is nearest its own), so that RGB photos' red, green and blue fill Sentinel-2's B04, B03 and
    B02, and Landsat's B3 fills B04, instead of being read as zeros.
    """
    have = [spec.sensor_info.band(b) for b in spec.bands]
    slots = [wanted.sensor_info.band(b) for b in wanted.bands]
    found = [next((i for i, h in enumerate(have) if same_band(s, h)), None) for s in slots]
    free_data = [i for i in range(len(have)) if i not in found]
    free_slots = [j for j, i in enumerate(found) if i is None]
    matched = sensors.wavelength_match([have[i] for i in free_data], [slots[j] for j in free_slots])
    for j, m in zip(free_slots, matched):
        if m is not None:
            found[j] = free_data[m]
    return found


def stand_ins(spec, wanted) -> dict[str, str]:
    """{band of `wanted`: band of `spec`} for the bands `band_indices` matched by wavelength, not
    by name (e.g. {"B04": "red", "B03": "green", "B02": "blue"} for RGB photos)."""
    return {
        name: spec.bands[i]
        for name, i in zip(wanted.bands, band_indices(spec, wanted))
        if i is not None and spec.bands[i].lower() != name.lower()
    }


def wavelength_indices(spec, wanted) -> list[int | None]:
    """For each band of SensorSpec `wanted` (a model's fixed input slots), the channel of images
    of SensorSpec `spec` that stands in for it by wavelength (`sensors.wavelength_match`), or
    None. Unlike `band_indices`, names are not compared, so other sensors map onto the slots
    (Landsat red onto MODIS band 1)."""
    have = [spec.sensor_info.band(b) for b in spec.bands]
    return sensors.wavelength_match(have, [wanted.sensor_info.band(b) for b in wanted.bands])


def pick_bands(spec, wanted, who: str) -> list[int]:
    """Channel indices of the bands of SensorSpec `wanted` in images of `spec`; an error names the
    bands the data lack."""
    index = band_indices(spec, wanted)
    absent = [b for b, i in zip(wanted.bands, index) if i is None]
    if absent:
        raise ValueError(
            f"{who} needs {wanted.sensor} bands {absent}, which {spec.sensor} data {spec.bands}"
            " lack"
        )
    return index


def token_grids(tokens: Sequence, grid_hw: tuple[int, int], skip: int = 0) -> list:
    """Tokens [B, skip + h*w, D] laid out on the patch grid [B, h, w, D] (leading `skip` tokens,
    e.g. CLS, dropped)."""
    return [t[:, skip:].reshape(t.shape[0], *grid_hw, t.shape[-1]) for t in tokens]
