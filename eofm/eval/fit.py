"""Training a task head on an encoder with the shared training loop (`eofm.train.loop`): frozen
(the default) or full finetuning with layer-wise lr decay (LLRD).

Frozen: only the head's parameters are trained; the encoder is a frozen input of the step.
Finetuning: the encoder parameters that encoding reads (`Encoder.encoding_params`) train too, the
lr of a parameter of layer l scaled by llrd ** (num_layers - l) (embeddings llrd ** num_layers, the
final norm and the head 1); the rest of the pretraining model (decoders, other modalities) stays
frozen. AdamW (weight decay on weight matrices only), linear warmup then cosine; the mesh,
checkpoints with exact resume, SIGTERM, metrics.jsonl and TensorBoard of the loop, in
WORKDIR/fit. A finished run is restored, not retrained.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from flax import nnx

from eofm.eval.encoders import Encoder
from eofm.train import loop

# (encoder model, head, batch) -> (scalar loss, dict of scalar metrics)
HeadLossFn = Callable[[nnx.Module, nnx.Module, dict[str, jax.Array]], tuple[jax.Array, dict]]
ENCODER, HEAD = "encoder/", "head/"


class EncoderWithHead(nnx.Module):
    """The encoder's whole model under `encoder/` and a task head under `head/`."""

    def __init__(self, encoder: nnx.Module, head: nnx.Module):
        self.encoder = encoder
        self.head = head


class ArraySource:
    """A grain source over in-memory arrays {key: [N, ...]}: example i is {key: array[i]}."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self._length = len(next(iter(arrays.values())))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self.arrays.items()}


def trainable(encoder: Encoder, finetune: bool) -> Callable[[str], bool]:
    """Path -> trained?: the head always, the encoding parameters of the encoder when finetuning."""
    encoding = encoder.encoding_params

    def trained(path: str) -> bool:
        if path.startswith(HEAD):
            return True
        return finetune and path.startswith(ENCODER) and path[len(ENCODER) :].startswith(encoding)

    return trained


def layer_decay(encoder: Encoder, llrd: float) -> Callable[[str], float]:
    """Path -> lr multiplier llrd ** (num_layers - layer) for the encoder's parameters, 1 for the
    head."""

    def scale(path: str) -> float:
        if not path.startswith(ENCODER):
            return 1.0
        return llrd ** (encoder.num_layers - encoder.layer_of(path[len(ENCODER) :]))

    return scale


def training_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The loop's config of a finetuning run: its `fit` block with the run's seed and the warmup in
    steps."""
    fit = config.fit.copy_and_resolve_references()
    with fit.unlocked():
        fit.seed = config.seed
        fit.warmup_steps = round(fit.warmup_fraction * fit.total_steps)
    return fit


def fit(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    encoder: Encoder,
    *,
    name: str,
    make_head: Callable[[nnx.Rngs], nnx.Module],
    loss_fn: HeadLossFn,
    make_dataset: Callable[[int, int], grain.MapDataset],
    input_keys: tuple[str, ...],
    inference: dict[str, Any] | None = None,
) -> tuple[nnx.Module, nnx.Module, list[dict[str, Any]]]:
    """Trains (or restores the finished training of) a head on `encoder` in WORKDIR/fit.

    Args:
      config: the finetuning config; its `fit` block is the loop's config (plus `finetune`,
        `llrd`) and `seed` seeds the head and the data order.
      name: names the head in checkpoints (a checkpoint of another head or encoder is refused).
      make_dataset: (process_index, process_count) -> batched grain MapDataset of training batches.
      inference: JSON of what predicting with the trained head needs besides its weights (see
        `eofm.infer.heads`); the checkpoints carry it as metadata "inference", with the run's
        `task`.
    Returns:
      (encoder model, head) with the trained parameters, and the logged history (metrics.jsonl).
    """
    settings = training_config(config)
    finetune = settings.finetune
    workload = loop.Workload(
        name=f"{name}, {'finetuned' if finetune else 'frozen'} encoder",
        variant=f"{encoder.name}:{encoder.variant} from {encoder.ref}",
        # The encoder's values come from its warm start; the head is seeded by `config.seed`.
        make_model=lambda rngs: EncoderWithHead(encoder.build(nnx.Rngs(0)), make_head(rngs)),
        loss_fn=lambda model, batch, rng: loss_fn(model.encoder, model.head, batch),
        make_dataset=make_dataset,
        input_keys=input_keys,
        trainable=trainable(encoder, finetune),
        lr_scale=layer_decay(encoder, settings.llrd) if finetune else None,
        warm_start=lambda: encoder.warm_start(ENCODER),
        meta={"inference": {"task": config.task, **(inference or {})}},
        examples="img" if config.task == "classification" else "windows",
    )
    workdir = Path(workdir) / "fit"
    result = loop.train(settings, workdir, workload)
    logged = workdir / "metrics.jsonl"  # written by process 0
    history = (
        [json.loads(line) for line in logged.read_text().splitlines()] if logged.exists() else []
    )
    return result.model.encoder, result.model.head, history
