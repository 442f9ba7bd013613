"""Trained dense heads rebuilt for inference from a finetune WORKDIR, without the training data.

A dense finetune run (`eofm.eval.dense.run`) records in the metadata of its checkpoints in
WORKDIR/fit ("inference") its config, class names, input specs, window and stride, the
normalisation method with the per-band statistics of its training pixels, and the encoder's
description (`Encoder.describe`: family, model fields, pretraining inputs and statistics); the
checkpoints hold the head and the encoder as trained (frozen or finetuned). `load_head` reads
them read-only and rebuilds the evaluation's predictor from WORKDIR alone: the pretraining
workdir of the encoder need not exist any more (e.g. on another machine).

Only dense heads (segmentation, change detection) make maps: a classification run, whose head
reads one pooled vector per image, is refused.

The evaluation's class map of a scene is the argmax of the blend of `logits` over its sliding
windows (`eofm.eval.windows.sliding_window`); `eofm.infer.maps` makes the same map of scenes of
any size. `predict` gives each window's class probabilities.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from eofm.data import inputs, normalize
from eofm.data.spec import SensorSpec, valid_key
from eofm.eval import dense, encoders, heads
from eofm.eval.fit import ENCODER, HEAD
from eofm.train import checkpoint, loop, optim

RERUN = (
    "rerun finetune/main.py with its config into a new --workdir (a finished run is restored,"
    " not retrained, so it keeps its checkpoints as they are)"
)


@dataclasses.dataclass
class TrainedHead:
    """A finetune run's trained dense head on its encoder, with the run's normalisation.

    Attributes:
      encoder: the encoder with the weights of the run (finetuned ones when it was finetuned).
      task: the dense task (`eofm.eval.dense.DENSE_TASKS`): image keys, taps, fusion.
      config: the finetune config of the run.
      class_names: the K class names, in logit order.
      specs: {key: SensorSpec} of the images the head was trained on.
      window: the window side S in px (the encoder's native size).
      stride: the evaluation's sliding-window stride in px.
      normalization: the method (`eofm.data.normalize.METHODS`).
      statistics: {key: {"sensor", "bands", "stats": {band: {...}}}} of the training pixels.
      head: the head with its trained weights.
      step: the fit checkpoint's step.
    """

    encoder: encoders.Encoder
    task: dense.DenseTask
    config: ml_collections.ConfigDict
    class_names: list[str]
    specs: dict[str, SensorSpec]
    window: int
    stride: int
    normalization: str
    statistics: dict[str, dict]
    head: nnx.Module
    step: int

    @property
    def keys(self) -> tuple[str, ...]:
        """The image keys a batch holds, in the task's order (before, after for change)."""
        return self.task.keys

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, key: str, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """f32[H, W, C] of raw values f32[H, W, C] of `specs[key]`'s bands, normalised as in
        training; invalid pixels (`valid` bool[H, W, C] False) are 0. Images of another sensor
        (which the evaluation normalises with their own scene's statistics) are not supported."""
        if key not in self.specs:
            raise KeyError(f"image key {key!r}: this head reads {list(self.keys)}")
        spec = self.specs[key]
        if raw.shape[-1] != len(spec.bands):
            raise ValueError(
                f"image {key!r} has {raw.shape[-1]} bands; the head was trained on {spec.sensor}"
                f" bands {list(spec.bands)}"
            )
        sample = {key: np.asarray(raw, np.float32), valid_key(key): np.asarray(valid, bool)}
        return self._normalizers[key].map(sample)[key]

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Logits f32[N, S, S, K] of normalised windows {key: f32[N, S, S, C]}."""
        return np.asarray(self._logits(batch))

    def predict(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities f32[N, S, S, K] (softmax of `logits`) of normalised windows
        {key: f32[N, S, S, C]}."""
        return np.asarray(self._probabilities(batch))

    @property
    def model(self) -> nnx.Module:
        """The encoder's model with the run's weights."""
        return self.encoder.model

    @functools.cached_property
    def _normalizers(self) -> dict[str, normalize.Normalize]:
        return {
            k: normalize.Normalize.of_band_stats(
                k, spec, self.normalization, self.statistics[k]["stats"]
            )
            for k, spec in self.specs.items()
        }

    @functools.cached_property
    def _logits(self) -> Callable:
        return self._jitted(lambda logits: logits)

    @functools.cached_property
    def _probabilities(self) -> Callable:
        return self._jitted(jax.nn.softmax)

    def _jitted(self, output: Callable[[jax.Array], jax.Array]) -> Callable:
        """batch -> output(dense logits of the trained encoder and head), jitted."""
        return encoders.jit_with_modules(
            lambda model, head, batch: output(
                dense.dense_logits(self.task, model, head, batch, self.specs)
            ),
            self.model,
            self.head,
        )


def load_head(workdir: str | Path) -> TrainedHead:
    """The trained dense head of the finetune run in `workdir` (its newest readable checkpoint in
    WORKDIR/fit, which must be the last step of the run), read-only.

    Raises:
      FileNotFoundError: no fit checkpoints in `workdir`, or only those of an unfinished fit.
      ValueError: a run saved without the inference metadata, or a classification run.
    """
    fit_dir = Path(workdir) / "fit"
    directory = fit_dir / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{workdir} holds no trained head: {directory} does not exist; train one with"
            f" finetune/main.py --workdir={workdir}"
        )
    ckpt = checkpoint.Checkpointer(directory, read_only=True)
    try:
        _inference_meta(*ckpt.latest_meta(), fit_dir)  # fails before any array is read
        step, weights = ckpt.latest_params()
        meta = _inference_meta(step, ckpt.meta(step), fit_dir)
    finally:
        ckpt.close()
    config = ml_collections.ConfigDict(meta["config"])
    task = dense.dense_task(config)
    specs = inputs.specs_from_json(meta["inputs"])
    encoder = encoders.Encoder.from_description(meta["encoder"], _under(weights, ENCODER))
    level_shapes = task.level_shapes(encoder, specs)
    head = _with_weights(
        lambda: heads.dense_head(
            config.head.kind,
            level_shapes,
            len(meta["classes"]),
            channels=config.head.channels,
            rngs=nnx.Rngs(0),
        ),
        _under(weights, HEAD),
        f"the head of {directory / str(step)}",
    )
    return TrainedHead(
        encoder=encoder,
        task=task,
        config=config,
        class_names=list(meta["classes"]),
        specs=specs,
        window=meta["window"],
        stride=meta["stride"],
        normalization=meta["normalization"]["method"],
        statistics=meta["normalization"]["statistics"],
        head=head,
        step=step,
    )


def _inference_meta(step: int, meta: dict[str, Any], fit_dir: Path) -> dict[str, Any]:
    """The "inference" metadata of a fit checkpoint of `step`, after checking that the run
    finished, that it records what inference needs, and that its head is dense."""
    total = meta.get("config", {}).get("total_steps")
    if total is not None and step < total:
        raise FileNotFoundError(
            f"{fit_dir}: the fit stopped at step {step}; the checkpoint of its last step {total}"
            " is missing: rerun finetune/main.py with the same --workdir to finish it"
        )
    saved = meta.get("inference")
    if saved is not None and saved["task"] not in dense.DENSE_TASKS:
        raise ValueError(
            f"{fit_dir} trained a {saved['task']} head; only dense heads"
            f" ({', '.join(dense.DENSE_TASKS)}) make maps"
        )
    if (
        meta.get("format") != loop.CHECKPOINT_FORMAT
        or saved is None
        or not {"normalization", "encoder"} <= saved.keys()
    ):
        raise ValueError(
            f"{fit_dir}: its checkpoints were saved without what inference needs (config,"
            f" classes, window, normalisation statistics, the encoder's description); {RERUN}"
        )
    return saved


def _under(weights: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """{path without `prefix`: array} of the weights under `prefix`."""
    return {p[len(prefix) :]: v for p, v in weights.items() if p.startswith(prefix)}


def _with_weights(
    make: Callable[[], nnx.Module], weights: dict[str, np.ndarray], where: str
) -> nnx.Module:
    """The module of `make` with every variable set from `weights` {"/"-joined path: array}."""
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(make)
    graphdef, state = nnx.split(abstract)
    given = dict(weights)
    problems = []

    def value(path: str, leaf):
        if path not in given:
            problems.append(f"{path}: missing")
            return leaf
        array = given.pop(path)
        if array.shape != leaf.shape:
            problems.append(f"{path}: shape {array.shape}, the module needs {leaf.shape}")
            return leaf
        return jnp.asarray(array, leaf.dtype)

    state = optim.map_paths(value, state)
    problems += [f"{path}: not in the module" for path in sorted(given)]
    if problems:
        raise checkpoint.CheckpointMismatchError(f"{where} does not fit: {'; '.join(problems)}")
    return nnx.merge(graphdef, state)
