"""Pretraining workloads: the family of `config.model_name` on the configured data, for
`eofm.train.loop.train`.

Data: the configured source is written once to ArrayRecord shards with per-band statistics
(`eofm.data.arrayrecord.prepare`, resumable and idempotent), and training reads the shards: select
`data.bands` of `data.sensors`, normalise with those statistics, random crop/flip/rot90 to
`image_size`, then the family's host transforms (`family.host_transforms`). Checkpoints carry
what evaluation needs: the input specs, the normalisation method with its statistics, and the
native image size.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
from flax import nnx
from jax.experimental import multihost_utils

from eofm.data import arrayrecord, augment, datasets, inputs, normalize, pipeline, stats
from eofm.data.spec import valid_key
from eofm.models import family
from eofm.train import checkpoint
from eofm.train.loop import WarmStart, Workload


def prepared_source(config: ml_collections.ConfigDict, workdir: Path):
    """The configured source as ArrayRecord, prepared by process 0; a directory prepared before is
    reused (damaged shards rebuilt) only when its fingerprint matches the configured source and
    its arguments, otherwise `arrayrecord.prepare` raises, naming the difference."""
    directory = Path(config.data.prepared_dir or workdir / "data")
    if jax.process_index() == 0:
        args = dict(config.data.source_args)
        source = datasets.make_source(config.data.source, **args)
        arrayrecord.prepare(
            source,
            directory,
            name=config.data.source,
            source_args=args,
            citation=datasets.CITATIONS.get(config.data.source, ""),
            log_every=0,
        )
    multihost_utils.sync_global_devices("eofm:prepared_data")
    return arrayrecord.ArrayRecordSource(directory)


def make_pipeline(config, source, specs, band_stats, family_transforms=()):
    """(process_index, process_count) -> batched MapDataset of normalised crops of the input
    `specs` (band-selected from the source's images), then the family's `family_transforms`."""
    keys = tuple(specs)
    transforms = [
        inputs.SelectBands(source.specs, {k: specs[k].bands for k in keys}),
        normalize.Normalize(specs, config.data.normalization, band_stats),
        augment.RandomCropFlipRotate(
            keys, size=config.data.image_size, scale=tuple(config.data.crop_scale)
        ),
        *family_transforms,
    ]

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


def input_meta(config: ml_collections.ConfigDict, specs, band_stats) -> dict:
    """What a pretraining checkpoint tells its consumers about the inputs."""
    return {
        "inputs": inputs.specs_to_json(specs),
        "normalization": {
            "method": config.data.normalization,
            "stats": {
                k: {b: band_stats[k]["stats"][b] for b in spec.bands}
                for k, spec in specs.items()
                if band_stats and k in band_stats
            },
        },
        "image_size": config.data.image_size,
    }


def weights_of_run(workdir: str | Path, prefix: str = "") -> WarmStart:
    """The newest model weights of another run, under `prefix` in this model, all required."""
    ckpt = checkpoint.Checkpointer(Path(workdir) / "checkpoints", read_only=True)
    try:
        step, values = ckpt.latest_params()
    finally:
        ckpt.close()
    values = {prefix + path: value for path, value in values.items()}
    return WarmStart(f"{workdir} (step {step})", values, covers=prefix)


def workload(config: ml_collections.ConfigDict, workdir: str | Path, source=None) -> Workload:
    """The pretraining workload of `config` on `source` (default: the `prepared_source` of the
    run)."""
    module = family.get(config.model_name)
    if source is None:
        source = prepared_source(config, Path(workdir))
    specs = inputs.input_specs(config.data, source.specs)
    band_stats = stats.read_stats_json(source.stats_path)
    make_model = family.model_builder(config, specs)
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: make_model(nnx.Rngs(0)))
    family_transforms, family_keys = family.host_transforms(config, specs)
    init_from = config.get("init_from")
    return Workload(
        name=config.model_name,
        variant=config.variant,
        make_model=make_model,
        loss_fn=lambda model, batch, rng: model.loss(batch, rng),
        make_dataset=make_pipeline(config, source, specs, band_stats, family_transforms),
        input_keys=(*specs, *(valid_key(k) for k in specs), *family_keys),
        flops_per_example=abstract.flops_per_example(config.data.image_size),
        warm_start=(lambda: weights_of_run(init_from)) if init_from else None,
        adapt_param=getattr(module, "adapt_param", None),
        meta=input_meta(config, specs, band_stats),
    )
