"""Frozen encoders for evaluation: any pretraining run (or a random init of a pretraining config),
applied to a downstream sensor by band NAME, at the encoder's native input size.

Reference forms:
  WORKDIR                          the newest checkpoint of a `pretrain/main.py` run
  random:CONFIG_FILE[:VARIANT]     a random init of that pretraining config (a floor to beat)

Bands: SMARTIES takes any bands; SpectralGPT and CROMA (optical) pick their bands from the input by
name; the MAE baseline fills the channels it was trained on by name and sets the ones the data
lacks to 0 after normalisation, i.e. to the dataset mean ("zero_after_norm").
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from eofm.data.spec import SensorSpec
from eofm.models import smarties, spectralgpt
from eofm.train import loop, pretrain


@dataclasses.dataclass
class FrozenEncoder:
    """Pooled features [B, D] of one image key, plus what the encoder expects of its input."""

    name: str
    variant: str
    step: int | None  # checkpoint step; None for a random init
    image_size: int  # native input size (inputs are resized to it)
    normalization: str  # the pretraining normalisation method
    features: Callable[[jax.Array], jax.Array]  # f32[B, S, S, C] (normalised) -> [B, D]
    missing_bands: tuple[str, ...]  # bands the encoder wanted that the data lacks (zero-filled)


def _load_config_file(ref: str) -> ml_collections.ConfigDict:
    path, _, arg = ref.partition(":")
    spec = importlib.util.spec_from_file_location("eofm_encoder_config", path)
    if spec is None or not Path(path).exists():
        raise FileNotFoundError(f"encoder config {path!r} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _run_config(workdir: Path) -> ml_collections.ConfigDict:
    manager = ocp.CheckpointManager(workdir.absolute() / "checkpoints")
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"encoder {workdir}: no checkpoint in {workdir / 'checkpoints'}")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    manager.close()
    return ml_collections.ConfigDict(meta["config"])


def load_encoder(ref: str, key: str, spec: SensorSpec) -> FrozenEncoder:
    """Builds the frozen encoder `ref` for images of `spec` (sample key `key`)."""
    if ref.startswith("random:"):
        config = _load_config_file(ref[len("random:") :])
        # The pretraining data is only read for its band layout: prepare it in a scratch folder.
        with tempfile.TemporaryDirectory(prefix="eofm_random_encoder_") as scratch:
            task = pretrain.build_task(config, scratch)
            step = None
            with nnx.use_eager_sharding(False):
                model = task.make_model(nnx.Rngs(config.seed))
            features, missing = _features(config, model, key, spec, Path(scratch))
    else:
        workdir = Path(ref)
        config = _run_config(workdir)
        config.data.prepared_dir = config.data.prepared_dir or str(workdir / "data")
        task = pretrain.build_task(config, workdir)
        step, model = loop.restore_model(config, workdir, task)
        features, missing = _features(config, model, key, spec, workdir)
    return FrozenEncoder(
        config.model_name,
        config.variant,
        step,
        config.data.image_size,
        config.data.normalization,
        jax.jit(features),
        missing,
    )


def _pick(spec: SensorSpec, bands, what: str) -> list[int]:
    absent = [b for b in bands if b not in spec.bands]
    if absent:
        raise ValueError(
            f"{what} needs bands {absent}, which {spec.sensor} data {spec.bands} lacks"
        )
    return [spec.bands.index(b) for b in bands]


def _features(config, model, key: str, spec: SensorSpec, workdir: Path):
    name = config.model_name
    if name == "smarties":
        view = smarties.View.of(spec, model.cfg)
        return (lambda x: model.encode(x, view)[1]), ()
    if name == "spectralgpt":
        idx = _pick(spec, spectralgpt.BANDS, "SpectralGPT")
        return (lambda x: model.encode(x[..., idx])[1]), ()
    if name == "croma":
        optical_key = config.data.sensors[0]
        bands = pretrain.input_specs(config, pretrain.prepared_source(config, workdir))[
            optical_key
        ].bands
        idx = _pick(spec, bands, "CROMA's optical encoder")
        return (lambda x: model.encode(optical=x[..., idx])["optical"][1]), ()
    if name == "mae":
        trained = pretrain.input_specs(config, pretrain.prepared_source(config, workdir))
        wanted = [b for s in trained.values() for b in s.bands]
        source_idx = [spec.bands.index(b) if b in spec.bands else -1 for b in wanted]
        missing = tuple(b for b, i in zip(wanted, source_idx) if i < 0)
        gather = np.maximum(np.asarray(source_idx), 0)
        present = jnp.asarray(np.asarray(source_idx) >= 0, jnp.float32)
        return (lambda x: model.encoder(x[..., gather] * present)[:, 0]), missing
    raise ValueError(f"no frozen-encoder adapter for model {name!r}")
