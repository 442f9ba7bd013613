"""Encoders for evaluation: any pretraining run (or a random init of a pretraining config), read
through its family's encoder interface (`eofm.models.family`) at its native input size.

Reference forms:
  WORKDIR                          the newest checkpoint of a `pretrain/main.py` run
  random:CONFIG_FILE[:ARGS]        a random init of that pretraining config (a floor to beat)

A checkpoint carries its model's config, input specs, normalisation and native size, so loading an
encoder reads no pretraining data; a random init takes the input specs its config's source
declares (no pixel is read).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from eofm.data import datasets, inputs
from eofm.data.spec import SensorSpec
from eofm.models import family
from eofm.train import checkpoint, loop, optim


@dataclasses.dataclass
class Encoder:
    """A pretrained (or random) encoder and what it expects of its input.

    Attributes:
      ref: the reference it was loaded from.
      name, variant: the model family and variant.
      step: checkpoint step; None for a random init.
      image_size: native input size (inputs are resized, or windowed, to it).
      normalization: the pretraining normalisation method.
      trained_specs: the inputs it was pretrained on.
      build: rngs -> a fresh (random) model of this family and shape.
      weights: {model state path: array}, the model's values.
    """

    ref: str
    name: str
    variant: str
    step: int | None
    image_size: int
    normalization: str
    trained_specs: dict[str, SensorSpec]
    build: Callable[[nnx.Rngs], nnx.Module]
    weights: dict[str, np.ndarray]

    @functools.cached_property
    def model(self) -> nnx.Module:
        """The model with its weights (the whole pretraining model; encoding reads part of it)."""
        with nnx.use_eager_sharding(False):
            abstract = nnx.eval_shape(lambda: self.build(nnx.Rngs(0)))
        graphdef, state = nnx.split(abstract)
        missing = []

        def value(path: str, leaf):
            if path not in self.weights:
                missing.append(path)
                return leaf
            return jax.numpy.asarray(self.weights[path], leaf.dtype)

        state = optim.map_paths(value, state)
        if missing:
            raise checkpoint.CheckpointMismatchError(
                f"encoder {self.ref} lacks {missing[:10]}{' and more' if len(missing) > 10 else ''}"
            )
        return nnx.merge(graphdef, state)

    @property
    def encoding_params(self) -> tuple[str, ...]:
        """Path prefixes of the parameters that encoding reads (finetuning trains only these)."""
        return tuple(self.model.ENCODING_PARAMS)

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    def layer_of(self, path: str) -> int:
        """LLRD layer id of a model parameter path (see `eofm.models.family`)."""
        return self.model.layer_of(path)

    def missing_bands(self, spec: SensorSpec) -> tuple[str, ...]:
        """Bands the encoder wanted that `spec` lacks; raises when it can read none of them."""
        return tuple(self.model.missing_bands(spec))

    def pooled_fn(self, spec: SensorSpec) -> Callable[[jax.Array], jax.Array]:
        """Jitted frozen pooled features: images f32[B, S, S, C] -> [B, D]."""
        return jit_with_modules(lambda model, x: model.features(x, spec)["pooled"], self.model)

    def shapes(self, spec: SensorSpec, taps: Sequence[int] | None = None) -> dict[str, Any]:
        """{"pooled": D, "levels": [(stride, width), ...]} of the features of native-size images."""
        s = self.image_size
        images = jax.ShapeDtypeStruct((1, s, s, len(spec.bands)), np.float32)
        out = jax.eval_shape(lambda x: self.model.features(x, spec, taps), images)
        levels = [(s // level.shape[1], level.shape[-1]) for level in out["levels"]]
        return {"pooled": out["pooled"].shape[-1], "levels": levels}

    def warm_start(self, prefix: str) -> loop.WarmStart:
        """The encoder's weights under `prefix` of a model that contains it."""
        values = {prefix + path: value for path, value in self.weights.items()}
        return loop.WarmStart(self.ref, values, covers=prefix)


def jit_with_modules(fn: Callable, *modules: nnx.Module) -> Callable:
    """`fn(*modules, *args)` jitted with the modules' variables as arguments, not as constants
    compiled into the program (which would make compiling a large model slow)."""
    graphs, states = zip(*(nnx.split(m) for m in modules))

    @jax.jit
    def apply(states, *args):
        return fn(*(nnx.merge(g, s) for g, s in zip(graphs, states)), *args)

    return lambda *args: apply(states, *args)


def _load_config_file(ref: str) -> ml_collections.ConfigDict:
    path, _, arg = ref.partition(":")
    spec = importlib.util.spec_from_file_location("eofm_encoder_config", path)
    if spec is None or not Path(path).exists():
        raise FileNotFoundError(f"encoder config {path!r} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _random(ref: str) -> Encoder:
    config = _load_config_file(ref[len("random:") :])
    source = datasets.make_source(config.data.source, **config.data.source_args)
    specs = inputs.input_specs(config.data, source.specs)
    build = family.model_builder(config, specs)
    with nnx.use_eager_sharding(False):
        model = build(nnx.Rngs(config.seed))
    weights = {
        optim.param_path(p): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]
    }
    return Encoder(
        ref,
        config.model_name,
        config.variant,
        None,
        config.data.image_size,
        config.data.normalization,
        specs,
        build,
        weights,
    )


def _pretrained(ref: str) -> Encoder:
    ckpt = checkpoint.Checkpointer(Path(ref) / "checkpoints")
    try:
        _, meta = ckpt.latest_meta()
        if meta.get("format") != loop.CHECKPOINT_FORMAT or "inputs" not in meta:
            raise checkpoint.CheckpointMismatchError(
                f"encoder {ref}: its checkpoints predate the layout that records input specs"
                f" (version {meta.get('format', 1)}, this eofm reads {loop.CHECKPOINT_FORMAT})"
            )
        step, weights = ckpt.latest_params()
    finally:
        ckpt.close()
    config = ml_collections.ConfigDict(meta["config"])
    specs = inputs.specs_from_json(meta["inputs"])
    return Encoder(
        ref,
        meta["model"],
        meta["variant"],
        step,
        meta["image_size"],
        meta["normalization"]["method"],
        specs,
        family.model_builder(config, specs),
        weights,
    )


def load_encoder(ref: str) -> Encoder:
    """The encoder `ref` (a pretraining workdir or `random:CONFIG[:ARGS]`)."""
    return _random(ref) if ref.startswith("random:") else _pretrained(ref)
