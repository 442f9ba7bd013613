"""Train state and the jitted train step (gradient accumulation, explicit shardings)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

# (model, batch, rng) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[nnx.Module, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds of the model and its optimizer; the graph itself is static."""

    step: jax.Array  # int32 scalar: optimizer updates done
    params: nnx.State  # trained parameters
    opt_state: Any  # optax state of `params`
    frozen: nnx.State  # the rest of the model: frozen parameters, non-parameter variables


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    loss_fn: LossFn,
    accum_steps: int = 1,
    constrain_batch: Callable[[dict[str, jax.Array]], dict[str, jax.Array]] = lambda b: b,
):
    """Returns step(state, batch, rng) -> (state, metrics).

    Gradients flow to `state.params` only; `state.frozen` (frozen parameters, e.g. a frozen
    encoder under a trained head, and non-parameter variables) is an input of the step, neither
    differentiated nor baked into the compiled program. `constrain_batch` pins the batch's
    sharding inside the step. With `accum_steps` > 1 the
    batch is split into that many microbatches along its leading axis and their gradients averaged,
    which equals one step on the whole batch for losses that are means over examples.
    Metrics: loss, lr, grad_norm, param_norm, the loss function's own metrics, and `grads_finite`,
    a per-parameter flag used to name the culprits when the loss stops being finite: whether the
    parameter's squared gradient norm is finite, i.e. false for an inf or NaN entry and for a
    gradient beyond float32's range when squared (norm above 1.8e19). The squared norms serve
    grad_norm too, so each gradient is reduced once.
    """

    def loss_and_metrics(params, frozen, batch, rng):
        return loss_fn(nnx.merge(graphdef, params, frozen), batch, rng)

    value_and_grad = jax.value_and_grad(loss_and_metrics, has_aux=True)

    def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        grad_fn = lambda params, batch, rng: value_and_grad(params, state.frozen, batch, rng)
        batch = constrain_batch(batch)
        if accum_steps == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, rng)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:]), batch
            )

            def body(carry, inputs):
                i, mb = inputs
                (loss, metrics), grads = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

            zeros = jax.tree.map(
                jnp.zeros_like,
                jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro), rng),
            )
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
            loss, metrics, grads = jax.tree.map(lambda x: x / accum_steps, total)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        squared_norms = jax.tree.map(lambda g: jnp.sum(jnp.square(g)), grads)
        metrics = {
            **metrics,
            "loss": loss,
            "lr": schedule(state.step),
            "grad_norm": jnp.sqrt(sum(jax.tree.leaves(squared_norms))),
            "param_norm": optax.tree.norm(params),
            "grads_finite": jax.tree.map(jnp.isfinite, squared_norms),
        }
        return TrainState(state.step + 1, params, opt_state, state.frozen), metrics

    return step
