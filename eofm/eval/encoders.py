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
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from eofm.data.spec import SensorSpec
from eofm.models import smarties, spectralgpt
from eofm.train import loop, optim, pretrain

# (model, images f32[B, S, S, C] normalised) -> pooled features [B, D]
PooledFn = Callable[[nnx.Module, jax.Array], jax.Array]
# (model, images, taps) -> one feature grid [B, S/p, S/p, D] per tapped block
LevelsFn = Callable[[nnx.Module, jax.Array, Sequence[int]], list[jax.Array]]


@dataclasses.dataclass(frozen=True)
class Adapter:
    """How the encoder reads images of one sensor (bands matched by name)."""

    pooled: PooledFn
    levels: LevelsFn
    missing_bands: tuple[str, ...]  # bands the encoder wanted that the data lacks (zero-filled)


@dataclasses.dataclass
class Encoder:
    """A pretrained (or random) encoder, what it expects of its input, and how to finetune it."""

    name: str
    variant: str
    step: int | None  # checkpoint step; None for a random init
    image_size: int  # native input size (inputs are resized, or windowed, to it)
    normalization: str  # the pretraining normalisation method
    model: nnx.Module  # the whole pretraining model; encoding reads `encoding_params` of it
    encoding_params: tuple[str, ...]  # path prefixes of the parameters that encoding reads
    embedding_params: str  # regex of the embedding parameters (LLRD layer 0)
    depth: int  # transformer blocks of the encoder
    patch_size: int
    embed_dim: int
    trained_specs: dict[str, SensorSpec]  # the inputs it was pretrained on

    def adapt(self, spec: SensorSpec) -> Adapter:
        """The adapter for images of `spec`; raises if the encoder needs bands the data lacks."""
        return _ADAPTERS[self.name](self, spec)

    def features(self, spec: SensorSpec) -> Callable[[jax.Array], jax.Array]:
        """Jitted frozen pooled features: images f32[B, S, S, C] -> [B, D]."""
        pooled = self.adapt(spec).pooled
        return jax.jit(lambda x: pooled(self.model, x))

    def default_taps(self) -> tuple[int, ...]:
        """Four blocks at 1/3, 1/2, 2/3 and the end of the depth ([3, 5, 7, 11] for 12 blocks,
        the PANGAEA choice)."""
        return tuple(max(0, round(self.depth * f) - 1) for f in (1 / 3, 1 / 2, 2 / 3, 1))

    def layer_of(self, path: str) -> int:
        """LLRD layer id of a parameter path: embeddings 0, block i -> i + 1, everything after
        (final norm, pooling head, task head) -> depth + 1."""
        return optim.vit_layer_of(self.depth, self.embedding_params)(path)


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


def load_encoder(ref: str) -> Encoder:
    """Builds the encoder `ref` (a pretraining workdir or `random:CONFIG[:VARIANT]`)."""
    if ref.startswith("random:"):
        config = _load_config_file(ref[len("random:") :])
        # The pretraining data is only read for its band layout: prepare it in a scratch folder.
        with tempfile.TemporaryDirectory(prefix="eofm_random_encoder_") as scratch:
            source = pretrain.prepared_source(config, Path(scratch))
            task = pretrain.build_task(config, scratch, source)
            step = None
            with nnx.use_eager_sharding(False):
                model = task.make_model(nnx.Rngs(config.seed))
    else:
        workdir = Path(ref)
        config = _run_config(workdir)
        config.data.prepared_dir = config.data.prepared_dir or str(workdir / "data")
        source = pretrain.prepared_source(config, workdir)
        task = pretrain.build_task(config, workdir, source)
        step, model = loop.restore_model(config, workdir, task)
    trained = pretrain.input_specs(config, source)
    name = config.model_name
    if name not in _ADAPTERS:
        raise ValueError(f"no encoder adapter for model {name!r}; known: {sorted(_ADAPTERS)}")
    vit = {"smarties": lambda m: m.cfg.mae.encoder, "mae": lambda m: m.cfg.encoder}
    cfg = vit[name](model) if name in vit else model.cfg
    return Encoder(
        name=name,
        variant=config.variant,
        step=step,
        image_size=config.data.image_size,
        normalization=config.data.normalization,
        model=model,
        encoding_params=_ENCODING_PARAMS[name],
        embedding_params=_EMBEDDING_PARAMS[name],
        depth=cfg.depth,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        trained_specs=dict(trained),
    )


def _pick(spec: SensorSpec, bands, what: str) -> list[int]:
    absent = [b for b in bands if b not in spec.bands]
    if absent:
        raise ValueError(
            f"{what} needs bands {absent}, which {spec.sensor} data {spec.bands} lacks"
        )
    return [spec.bands.index(b) for b in bands]


def _vit_grids(tokens: list[jax.Array], images: jax.Array, patch: int) -> list[jax.Array]:
    """Drops CLS and lays tokens [B, 1 + L, D] out on the patch grid [B, H/p, W/p, D]."""
    h, w = images.shape[1] // patch, images.shape[2] // patch
    return [t[:, 1:].reshape(t.shape[0], h, w, t.shape[-1]) for t in tokens]


def _smarties(encoder: Encoder, spec: SensorSpec) -> Adapter:
    view = smarties.View.of(spec, encoder.model.cfg)

    def levels(model, x, taps):
        tokens = model.encoder.embed_patches(x, weights=view.weights)
        return _vit_grids(model.encoder.tapped_tokens(tokens, taps), x, encoder.patch_size)

    return Adapter(lambda model, x: model.encode(x, view)[1], levels, ())


def _spectralgpt(encoder: Encoder, spec: SensorSpec) -> Adapter:
    idx = _pick(spec, spectralgpt.BANDS, "SpectralGPT")
    return Adapter(
        lambda model, x: model.encode(x[..., idx])[1],
        lambda model, x, taps: model.tapped_grids(x[..., idx], taps),
        (),
    )


def _croma(encoder: Encoder, spec: SensorSpec) -> Adapter:
    optical = next(iter(encoder.trained_specs.values()))  # the optical sensor comes first
    idx = _pick(spec, optical.bands, "CROMA's optical encoder")
    return Adapter(
        lambda model, x: model.encode(optical=x[..., idx])["optical"][1],
        lambda model, x, taps: model.optical.tapped_grids(x[..., idx], taps),
        (),
    )


def _mae(encoder: Encoder, spec: SensorSpec) -> Adapter:
    wanted = [b for s in encoder.trained_specs.values() for b in s.bands]
    source_idx = np.asarray([spec.bands.index(b) if b in spec.bands else -1 for b in wanted])
    missing = tuple(b for b, i in zip(wanted, source_idx) if i < 0)
    gather = np.maximum(source_idx, 0)
    present = jnp.asarray(source_idx >= 0, jnp.float32)

    def fill(x):
        return x[..., gather] * present

    def levels(model, x, taps):
        tokens = model.encoder.tapped_tokens(model.encoder.embed_patches(fill(x)), taps)
        return _vit_grids(tokens, x, encoder.patch_size)

    return Adapter(lambda model, x: model.encoder(fill(x))[:, 0], levels, missing)


_ADAPTERS: dict[str, Callable[[Encoder, SensorSpec], Adapter]] = {
    "smarties": _smarties,
    "spectralgpt": _spectralgpt,
    "croma": _croma,
    "mae": _mae,
}
# Path prefixes (in the model state) of the parameters that encoding reads, pooling included:
# finetuning updates only these.
_ENCODING_PARAMS = {
    "smarties": ("encoder/",),
    "mae": ("encoder/",),
    "spectralgpt": ("patch_embed/", "pos/", "blocks/", "norm/"),
    "croma": ("optical/", "optical_gap/"),
}
# The embedding parameters among them (LLRD layer 0).
_EMBEDDING_PARAMS = {
    "smarties": r"(^|/)encoder/(patch_embed|cls_token)/",
    "mae": r"(^|/)encoder/(patch_embed|cls_token)/",
    "spectralgpt": r"(^|/)(patch_embed|pos)/",
    "croma": r"(^|/)optical/embed/",
}
