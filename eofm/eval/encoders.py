"""Encoders for evaluation: any pretraining run (or a random init of a pretraining config), read
through its family's encoder interface (`eofm.models.family`) at its native input size.

Reference forms:
  WORKDIR                          the newest checkpoint of a `pretrain/main.py` run
  random:CONFIG_FILE[:ARGS]        a random init of that pretraining config (a floor to beat)
  baseline:image_stats             per-band image statistics, for classification only
                                   (`eofm.eval.baselines`; `load_encoder` refuses it)

A checkpoint carries its model's config, input specs, normalisation and native size, so loading an
encoder reads no pretraining data; a random init takes the input specs its config's source
declares (no pixel is read). A run is only read: its checkpoints are opened read-only (nothing in
its workdir is created, moved or written), and of the config stored with them only the model's
fields are used, never the paths that name the run's data or outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from eofm.data import datasets, inputs
from eofm.data.spec import SensorSpec, specs_to_json
from eofm.models import family
from eofm.train import checkpoint, loop, optim, validate

BASELINE_PREFIX = "baseline:"


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
      model_config: what building the model needs: `model_name`, the `model` fields and
        `data.image_size` (see `eofm.models.family.model_builder`).
      weights: {model state path: array}, the model's values.
      band_stats: {input key: {band: {"mean", "std", "p1", "p99", ...}}}, the per-band
        statistics its pretraining normalised with (empty for a random init).
    """

    ref: str
    name: str
    variant: str
    step: int | None
    image_size: int
    normalization: str
    trained_specs: dict[str, SensorSpec]
    model_config: ml_collections.ConfigDict
    weights: dict[str, np.ndarray]
    band_stats: dict[str, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)

    @property
    def build(self) -> Callable[[nnx.Rngs], nnx.Module]:
        """rngs -> a fresh (random) model of this family and shape."""
        return family.model_builder(self.model_config, self.trained_specs)

    def describe(self) -> dict[str, Any]:
        """JSON of everything but the weights: `from_description` rebuilds the encoder from it
        and the weights alone (a finetune run stores it, so that its workdir is self-contained)."""
        return {
            "ref": self.ref,
            "name": self.name,
            "variant": self.variant,
            "step": self.step,
            "image_size": self.image_size,
            "normalization": self.normalization,
            "trained_specs": specs_to_json(self.trained_specs),
            "model_config": self.model_config.to_dict(),
            "band_stats": self.band_stats,
        }

    @classmethod
    def from_description(cls, description: dict[str, Any], weights: dict[str, np.ndarray]):
        """The encoder of `describe()`'s JSON with `weights` {model state path: array}."""
        d = description
        return cls(
            d["ref"],
            d["name"],
            d["variant"],
            d["step"],
            d["image_size"],
            d["normalization"],
            inputs.specs_from_json(d["trained_specs"]),
            ml_collections.ConfigDict(d["model_config"]),
            weights,
            d["band_stats"],
        )

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

    @property
    def feature_definition(self) -> str:
        """What the family's `features` returns as pooled features and levels ("" if unstated)."""
        return getattr(type(self.model), "feature_definition", "")

    def stats_for(self, spec: SensorSpec) -> dict[str, dict[str, float]] | None:
        """{band: statistics} of `spec`'s bands from the pretraining input of the same sensor
        that has them all, or None when no input does."""
        for key, trained in self.trained_specs.items():
            known = self.band_stats.get(key, {})
            if trained.sensor == spec.sensor and all(b in known for b in spec.bands):
                return {b: known[b] for b in spec.bands}
        return None

    def missing_bands(self, spec: SensorSpec) -> tuple[str, ...]:
        """Bands the encoder was pretrained on that `spec` lacks (read as zeros).

        Raises ValueError naming the encoder, its bands and the data's bands when it cannot read
        `spec` (no band in common, or a family that needs bands `spec` lacks).
        """
        try:
            return tuple(self.model.missing_bands(spec))
        except ValueError as e:
            pretrained = "; ".join(
                f"{key}: {s.sensor} {list(s.bands)}" for key, s in self.trained_specs.items()
            )
            raise ValueError(
                f"encoder {self.ref} ({self.name}:{self.variant}, pretrained on {pretrained})"
                f" cannot read {spec.sensor} data with bands {list(spec.bands)}: {e}"
            ) from e

    def zero_filled_bands(self, inputs: Iterable[tuple[str, SensorSpec]]) -> dict[str, list[str]]:
        """{data key: the bands the encoder was pretrained on that images of that key lack} for
        the keys lacking any, each list in the encoder's band order (a key whose images come from
        several sensors gets the union).

        Args:
          inputs: (data key, SensorSpec) of every input the evaluation feeds the encoder.
        Raises:
          ValueError as `missing_bands`, for the first input the encoder cannot read.
        """
        missing: dict[str, set[str]] = {}
        for key, spec in inputs:
            missing.setdefault(key, set()).update(self.missing_bands(spec))
        order = [b for s in self.trained_specs.values() for b in s.bands]
        rank = lambda band: (order.index(band) if band in order else len(order), band)
        return {key: sorted(bands, key=rank) for key, bands in missing.items() if bands}

    def stand_in_bands(self, inputs: Iterable[tuple[str, SensorSpec]]) -> dict[str, dict[str, str]]:
        """{data key: {pretraining band: the data band of another name that the encoder reads in
        its place, matched by wavelength}} for the keys that have any (e.g. {"rgb": {"B04":
        "red", ...}} for a Sentinel-2 MAE on RGB photos); families that project any band by its
        wavelength (SMARTIES) have none."""
        model = self.model
        if not hasattr(model, "stand_in_bands"):
            return {}
        found = {key: model.stand_in_bands(spec) for key, spec in inputs}
        return {key: pairs for key, pairs in found.items() if pairs}

    def pooled_fn(self, spec: SensorSpec) -> Callable[[jax.Array], jax.Array]:
        """Jitted frozen pooled features: images f32[B, S, S, C] -> [B, D]."""
        return jit_with_modules(lambda model, x: model.features(x, spec)["pooled"], self.model)

    def shapes(self, spec: SensorSpec, taps: Sequence[int] | None = None) -> dict[str, Any]:
        """{"pooled": D, "levels": [(stride, width), ...]} of the features of native-size images."""
        s = self.image_size
        images = jax.ShapeDtypeStruct((1, s, s, len(spec.bands)), np.float32)
        model = self.model  # built outside the trace, so that its cached weights stay concrete
        out = jax.eval_shape(lambda x: model.features(x, spec, taps), images)
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
    model_config = _model_config(config.to_dict(), config.data.image_size)
    with nnx.use_eager_sharding(False):
        model = family.model_builder(model_config, specs)(nnx.Rngs(config.seed))
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
        model_config,
        weights,
    )


def _model_config(stored: dict[str, Any], image_size: int) -> ml_collections.ConfigDict:
    """What building the model needs of a pretraining config (as a dict): its family and model
    fields, and the native size. The rest of that config (data roots, prepared shards) names paths
    of the run that wrote it, which evaluation never reads from or writes to."""
    return ml_collections.ConfigDict(
        {
            "model_name": stored["model_name"],
            "model": stored["model"],
            "data": {"image_size": image_size},
        }
    )


def _pretrained(ref: str) -> Encoder:
    directory = Path(ref) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(
            f"encoder {ref}: no directory {directory}; an encoder is the workdir of a pretraining"
            " run or random:CONFIG_FILE[:ARGS]"
        )
    ckpt = checkpoint.Checkpointer(directory, read_only=True)
    try:
        _, meta = ckpt.latest_meta()
        if meta.get("format") != loop.CHECKPOINT_FORMAT or "inputs" not in meta:
            raise checkpoint.CheckpointMismatchError(
                f"encoder {ref}: its checkpoints predate the layout that records input specs"
                f" (version {meta.get('format', 1)}, this eofm reads {loop.CHECKPOINT_FORMAT})"
            )
        step, weights = ckpt.latest_params()
        meta = ckpt.meta(step)  # the newest metadata may belong to a checkpoint with bad arrays
    finally:
        ckpt.close()
    specs = inputs.specs_from_json(meta["inputs"])
    return Encoder(
        ref,
        meta["model"],
        meta["variant"],
        step,
        meta["image_size"],
        meta["normalization"]["method"],
        specs,
        _model_config(meta["config"], meta["image_size"]),
        weights,
        meta["normalization"].get("stats", {}),
    )


def run_directory(ref: str) -> Path | None:
    """The directory of the pretraining run that encoder `ref` reads (None for a random init or a
    baseline)."""
    return None if ref.startswith(("random:", BASELINE_PREFIX)) else Path(ref)


def load_encoder(ref: str) -> Encoder:
    """The encoder `ref` (a pretraining workdir or `random:CONFIG[:ARGS]`).

    Raises ConfigError for a `baseline:NAME` reference: a baseline has no network, and only the
    classification evaluation reads it (`eofm.eval.baselines`)."""
    if ref.startswith(BASELINE_PREFIX):
        raise validate.ConfigError(
            f"config key encoder = {ref!r}: a baseline without a network serves classification"
            " (method knn or linear) only; it has no feature maps or weights for this task"
        )
    return _random(ref) if run_directory(ref) is None else _pretrained(ref)
