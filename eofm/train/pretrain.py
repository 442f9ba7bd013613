"""Pretraining tasks: model + data + objective from a config, for `eofm.train.loop.train`.

Data: the configured source is written once to ArrayRecord shards with per-band statistics
(`eofm.data.arrayrecord.prepare`, resumable and idempotent), and training reads the shards:
normalise with those statistics, random crop/flip/rot90 to `image_size`, stack the sensors named in
`data.sensors` along channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from eofm.data import arrayrecord, augment, datasets, normalize, pipeline, stats
from eofm.data.spec import SensorSpec, valid_key
from eofm.models import croma as croma_lib
from eofm.models import mae as mae_lib
from eofm.models import smarties as smarties_lib
from eofm.models import spectralgpt as spectralgpt_lib
from eofm.models import vit as vit_lib
from eofm.train.loop import Task

INPUT_KEY = "image"


class StackSensors(grain.transforms.Map):
    """grain map: concatenates the images of `keys` along channels into "image"."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys

    def map(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {**sample, INPUT_KEY: np.concatenate([sample[k] for k in self.keys], axis=-1)}


class SelectBands(grain.transforms.Map):
    """grain map: keeps the named bands of each image key (and of its validity mask), in order."""

    def __init__(self, specs: dict[str, SensorSpec], bands: dict[str, tuple[str, ...]]):
        self.index = {
            k: [specs[k].bands.index(b) for b in specs[k].sensor_info.resolve(v)]
            for k, v in bands.items()
        }

    def map(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        for key, idx in self.index.items():
            out[key] = sample[key][..., idx]
            out[valid_key(key)] = sample[valid_key(key)][..., idx]
        return out


def input_specs(config, source) -> dict[str, SensorSpec]:
    """SensorSpecs of `data.sensors` after the optional `data.bands` selection."""
    keys = tuple(config.data.sensors)
    missing = [k for k in keys if k not in source.specs]
    if missing:
        raise ValueError(
            f"data.sensors {missing} are not in the data, which has {list(source.specs)}"
        )
    bands = dict(config.data.get("bands") or {})
    unknown = set(bands) - set(keys)
    if unknown:
        raise ValueError(
            f"data.bands names {sorted(unknown)}, which are not in data.sensors {keys}"
        )
    specs = {}
    for k in keys:
        spec = source.specs[k]
        if k in bands:
            chosen = spec.sensor_info.resolve(tuple(bands[k]))
            absent = [b for b in chosen if b not in spec.bands]
            if absent:
                raise ValueError(f"data.bands[{k!r}]: {absent} are not among {spec.bands}")
            spec = SensorSpec(spec.sensor, chosen)
        specs[k] = spec
    return specs


def prepared_source(config: ml_collections.ConfigDict, workdir: Path):
    """The configured source as ArrayRecord (prepared by process 0, reused when present)."""
    directory = Path(config.data.prepared_dir or workdir / "data")
    if jax.process_index() == 0:
        source = datasets.make_source(config.data.source, **config.data.source_args)
        arrayrecord.prepare(
            source,
            directory,
            name=config.data.source,
            citation=datasets.CITATIONS.get(config.data.source, ""),
            log_every=0,
        )
    multihost_utils.sync_global_devices("eofm:prepared_data")
    return arrayrecord.ArrayRecordSource(directory)


def input_channels(specs: dict[str, SensorSpec]) -> int:
    return sum(len(spec.bands) for spec in specs.values())


def make_pipeline(config, source, *, stack: bool):
    """(process_index, process_count) -> batched MapDataset of normalised crops of `data.sensors`
    (band-selected by `data.bands`; stacked along channels into "image" when `stack`)."""
    keys = tuple(config.data.sensors)
    specs = input_specs(config, source)
    band_stats = stats.read_stats_json(source.stats_path)
    transforms = [
        SelectBands(source.specs, {k: specs[k].bands for k in keys}),
        normalize.Normalize(specs, config.data.normalization, band_stats),
        augment.RandomCropFlipRotate(
            keys, size=config.data.image_size, scale=tuple(config.data.crop_scale)
        ),
    ]
    if stack:
        transforms.append(StackSensors(keys))

    def make_dataset(process_index: int, process_count: int):
        return pipeline.make_dataset(
            source,
            batch_size=config.batch_size // process_count,
            seed=config.seed,
            transforms=transforms,
            process_index=process_index,
            process_count=process_count,
        )

    return make_dataset


def _task(config: ml_collections.ConfigDict, source, *, stack: bool = False, **fields) -> Task:
    """A `Task` named by the config, on the pipeline of `source`; `fields` give the rest."""
    return Task(
        name=config.model_name,
        variant=config.variant,
        make_dataset=make_pipeline(config, source, stack=stack),
        **fields,
    )


def mae_config(config: ml_collections.ConfigDict, in_chans: int) -> mae_lib.MAEConfig:
    m = config.model
    encoder = vit_lib.ViTConfig(
        patch_size=m.patch_size,
        embed_dim=m.embed_dim,
        depth=m.depth,
        num_heads=m.num_heads,
        in_chans=in_chans,
        dtype=jnp.dtype(m.dtype),
    )
    return mae_lib.MAEConfig(
        encoder=encoder,
        decoder_dim=m.decoder_dim,
        decoder_depth=m.decoder_depth,
        decoder_heads=m.decoder_heads,
        mask_ratio=m.mask_ratio,
        norm_pix_loss=m.norm_pix_loss,
    )


def mae_loss(model: mae_lib.MAE, batch, rng):
    loss, _ = model(batch[INPUT_KEY], rng=rng)
    return loss, {}


def _mae_task(config, source) -> Task:
    cfg = mae_config(config, input_channels(input_specs(config, source)))
    size = config.data.image_size
    return _task(
        config,
        source,
        stack=True,
        make_model=lambda rngs: mae_lib.MAE(cfg, rngs=rngs),
        loss_fn=mae_loss,
        input_keys=(INPUT_KEY,),
        flops_per_example=mae_lib.mae_flops_per_example(cfg, (size, size)),
    )


def smarties_config(config: ml_collections.ConfigDict) -> smarties_lib.SmartiesConfig:
    s = config.smarties
    return smarties_lib.SmartiesConfig(
        mae=mae_config(config, in_chans=0),
        mixup_ratio=s.mixup_ratio,
        official_mixup_bug=s.official_mixup_bug,
        blend=s.blend,
    )


def _smarties_task(config, source) -> Task:
    cfg = smarties_config(config)
    keys = tuple(config.data.sensors)
    if len(keys) not in (1, 2):
        raise ValueError(f"SMARTIES pretrains on one sensor or a pair, got data.sensors={keys}")
    specs = input_specs(config, source)
    views = [smarties_lib.View.of(specs[k], cfg) for k in keys]

    def loss_fn(model, batch, rng):
        return model([batch[k] for k in keys], views, rng=rng)

    size = config.data.image_size
    return _task(
        config,
        source,
        make_model=lambda rngs: smarties_lib.Smarties(cfg, rngs=rngs),
        loss_fn=loss_fn,
        input_keys=keys,
        flops_per_example=smarties_lib.smarties_flops_per_example(cfg, (size, size), len(keys)),
    )


def croma_config(config: ml_collections.ConfigDict) -> croma_lib.CromaConfig:
    m, c = config.model, config.croma
    return croma_lib.CromaConfig(
        embed_dim=m.embed_dim,
        depth=m.depth,
        num_heads=m.num_heads,
        patch_size=m.patch_size,
        decoder_dim=m.decoder_dim,
        decoder_heads=m.decoder_heads,
        decoder_mlp_dim=m.decoder_mlp_dim,
        mask_ratio=m.mask_ratio,
        temperature_init=c.temperature_init,
        contrastive_weight=c.contrastive_weight,
        mae_weight=c.mae_weight,
        dtype=jnp.dtype(m.dtype),
    )


def _croma_task(config, source) -> Task:
    cfg = croma_config(config)
    specs = input_specs(config, source)
    if len(specs) != 2:
        raise ValueError(f"CROMA needs data.sensors = (optical, radar), got {tuple(specs)}")
    optical, radar = specs
    for key, spec, n, what in (
        (optical, specs[optical], cfg.optical_channels, "optical"),
        (radar, specs[radar], cfg.radar_channels, "radar"),
    ):
        if len(spec.bands) != n:
            raise ValueError(
                f"CROMA's {what} input {key!r} must have {n} bands, got"
                f" {spec.bands} (select them with data.bands)"
            )

    def loss_fn(model, batch, rng):
        return model(batch[optical], batch[radar], rng=rng)

    size = config.data.image_size
    return _task(
        config,
        source,
        make_model=lambda rngs: croma_lib.Croma(cfg, rngs=rngs),
        loss_fn=loss_fn,
        input_keys=(optical, radar),
        flops_per_example=croma_lib.croma_flops_per_example(cfg, (size, size)),
    )


def spectralgpt_config(config: ml_collections.ConfigDict) -> spectralgpt_lib.SpectralGPTConfig:
    m = config.model
    return spectralgpt_lib.SpectralGPTConfig(
        embed_dim=m.embed_dim,
        depth=m.depth,
        num_heads=m.num_heads,
        image_size=config.data.image_size,
        decoder_dim=m.decoder_dim,
        decoder_depth=m.decoder_depth,
        decoder_heads=m.decoder_heads,
        mask_ratio=m.mask_ratio,
        dtype=jnp.dtype(m.dtype),
    )


def _adapt_spectralgpt(path: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Interpolates spatial position tables to the new grid (progressive training)."""
    if path.split("/")[-2:] != ["spatial", "value"]:
        raise ValueError(f"{path}: shape {value.shape} cannot become {shape}")
    return np.asarray(spectralgpt_lib.resize_positions(value, int(round(np.sqrt(shape[0])))))


def _spectralgpt_task(config, source) -> Task:
    cfg = spectralgpt_config(config)
    specs = input_specs(config, source)
    if len(specs) != 1:
        raise ValueError(f"SpectralGPT takes one Sentinel-2 image, got data.sensors={tuple(specs)}")
    ((key, spec),) = specs.items()
    if spec.bands != spectralgpt_lib.BANDS:
        raise ValueError(
            f"SpectralGPT needs the bands {spectralgpt_lib.BANDS} in this order, got"
            f" {spec.bands} (set data.bands)"
        )

    def loss_fn(model, batch, rng):
        return model(batch[key], rng=rng)

    return _task(
        config,
        source,
        make_model=lambda rngs: spectralgpt_lib.SpectralGPT(cfg, rngs=rngs),
        loss_fn=loss_fn,
        input_keys=(key,),
        flops_per_example=spectralgpt_lib.spectralgpt_flops_per_example(cfg),
        adapt_param=_adapt_spectralgpt,
    )


TASKS = {
    "mae": _mae_task,
    "smarties": _smarties_task,
    "croma": _croma_task,
    "spectralgpt": _spectralgpt_task,
}


def build_task(config: ml_collections.ConfigDict, workdir: str | Path, source=None) -> Task:
    """The pretraining task named by `config.model_name`, on `source` (default: the
    `prepared_source` of the run)."""
    if config.model_name not in TASKS:
        raise ValueError(f"unknown model_name {config.model_name!r}; available: {sorted(TASKS)}")
    if source is None:
        source = prepared_source(config, Path(workdir))
    return TASKS[config.model_name](config, source)
