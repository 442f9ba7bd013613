"""Trains a task head on an encoder: frozen (the default) or full finetuning with layer-wise lr
decay (LLRD).

Frozen: only the head's parameters are optimised; the encoder's are a constant input of the step.
Finetuning: the encoder parameters that encoding reads (`Encoder.encoding_params`) are optimised
too, block i's learning rate scaled by llrd ** (depth + 1 - layer) (embeddings llrd ** (depth + 1),
the final norm 1, the head 1); the rest of the pretraining model (decoders, other modalities)
stays frozen. AdamW (b2 0.999, weight decay on weight matrices only), linear warmup then cosine.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from eofm.eval.encoders import Encoder
from eofm.train import optim

# (encoder model, head, batch) -> (scalar loss, dict of scalar metrics)
HeadLossFn = Callable[[nnx.Module, nnx.Module, dict[str, jax.Array]], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """Optimisation of a head (and, with `finetune`, of the encoder)."""

    steps: int
    lr: float
    warmup_steps: int
    weight_decay: float
    finetune: bool
    llrd: float
    log_every: int

    @classmethod
    def from_config(cls, c: ml_collections.ConfigDict) -> FitSettings:
        return cls(**{f.name: c[f.name] for f in dataclasses.fields(cls)})


def fit(
    encoder: Encoder,
    head: nnx.Module,
    loss_fn: HeadLossFn,
    next_batch: Callable[[np.random.Generator], dict[str, np.ndarray]],
    settings: FitSettings,
    *,
    seed: int,
) -> tuple[nnx.Module, nnx.Module, list[dict[str, float]]]:
    """Optimises `head` (and the encoder if `settings.finetune`) for `settings.steps` steps.

    Args:
      next_batch: draws one training batch from a numpy Generator seeded with `seed`.
    Returns:
      (encoder model, head) with the trained parameters, and the logged history
      [{"step", "loss", "lr", "seconds", ...metrics}].
    """
    graph_m, params_m, rest_m = nnx.split(encoder.model, nnx.Param, ...)
    graph_h, params_h, rest_h = nnx.split(head, nnx.Param, ...)
    params = {"head": params_h}
    frozen, scales = (), None
    if settings.finetune:
        params["encoder"] = params_m
        encoding = "|".join(re.escape(prefix) for prefix in encoder.encoding_params)
        frozen = (rf"^encoder/(?!{encoding})",)
        scales = optim.layer_scales(params, encoder.depth + 1, settings.llrd, encoder.layer_of)
    tx, schedule = optim.make_optimizer(
        params,
        lr=settings.lr,
        total_steps=settings.steps,
        warmup_steps=settings.warmup_steps,
        weight_decay=settings.weight_decay,
        b2=0.999,
        frozen=frozen,
        lr_scales=scales,
    )

    def loss(params, frozen_encoder, batch):
        model_params = params["encoder"] if settings.finetune else frozen_encoder
        model = nnx.merge(graph_m, model_params, rest_m)
        return loss_fn(model, nnx.merge(graph_h, params["head"], rest_h), batch)

    @jax.jit
    def step(params, opt_state, frozen_encoder, batch):
        (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
            params, frozen_encoder, batch
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {**metrics, "loss": value}

    opt_state = tx.init(params)
    # A frozen encoder's parameters are an argument of the step (not differentiated, and not
    # baked into the compiled step as constants).
    frozen_encoder = None if settings.finetune else params_m
    rng = np.random.default_rng(seed)
    history, start = [], time.perf_counter()
    for i in range(settings.steps):
        params, opt_state, metrics = step(params, opt_state, frozen_encoder, next_batch(rng))
        if (i + 1) % settings.log_every == 0 or i + 1 == settings.steps:
            record = {k: float(v) for k, v in metrics.items()}
            if not np.isfinite(record["loss"]):
                raise FloatingPointError(f"head training: loss {record['loss']} at step {i + 1}")
            record.update(step=i + 1, lr=float(schedule(i)), seconds=time.perf_counter() - start)
            history.append(record)
            logging.info("head step %d/%d: loss %.4f", i + 1, settings.steps, record["loss"])
    model = nnx.merge(graph_m, params.get("encoder", params_m), rest_m)
    return model, nnx.merge(graph_h, params["head"], rest_h), history
