"""AdamW with linear warmup + cosine decay, weight-decay masks and per-parameter lr scales (LLRD).

Parameters are addressed by their path in the model state joined with "/", e.g.
"encoder/blocks/3/attn/qkv/kernel". Schedules step once per optimizer update (not per microbatch).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import optax


def param_path(path: tuple) -> str:
    """'/'-joined names of a pytree key path."""
    parts = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        parts.append(str(name))
    return "/".join(parts)


def map_paths(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """Applies `fn(path, leaf)` to every leaf of `tree`."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(param_path(p), x), tree)


def lr_schedule(
    base_lr: float, total_steps: int, warmup_steps: int, end_lr_ratio: float = 0.0
) -> optax.Schedule:
    """Linear warmup from 0 to `base_lr`, then cosine decay to `base_lr * end_lr_ratio`."""
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps {warmup_steps} must lie in [0, total_steps={total_steps}]")
    return optax.warmup_cosine_decay_schedule(
        0.0,
        base_lr,
        warmup_steps,
        max(total_steps, warmup_steps + 1),
        end_value=base_lr * end_lr_ratio,
    )


_NO_DECAY = re.compile(
    r"(^|/)(bias|scale|[a-z_]*token|pos_embed|angle_embed|a_log|cpb_[a-z0-9_]+)(/|$)"
)


def decay_mask(params: Any) -> Any:
    """Weight decay on weight matrices only: not on biases (a fused qkv bias is 2-D), norm scales,
    learned tokens, position and angle embeddings, position-bias MLPs (SwinV2's `cpb_*`) or
    Mamba's state matrix `a_log` (as Mamba intends), nor on any 1-D parameter."""
    return map_paths(
        lambda path, x: getattr(x, "ndim", 0) >= 2 and not _NO_DECAY.search(path), params
    )


def make_optimizer(
    params: Any,
    *,
    lr: float,
    total_steps: int,
    warmup_steps: int,
    weight_decay: float = 0.05,
    b1: float = 0.9,
    b2: float = 0.95,
    grad_clip_norm: float | None = None,
    lr_scales: Any = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW + schedule.

    Args:
      params: the (abstract) parameter tree, used for masks.
      lr_scales: optional tree of per-parameter lr multipliers (e.g. layer-wise lr decay).
    Returns:
      (transformation, schedule); the schedule gives the lr logged per step.
    """
    schedule = lr_schedule(lr, total_steps, warmup_steps)
    parts = []
    if grad_clip_norm:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    parts.append(optax.scale_by_adam(b1=b1, b2=b2))
    parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask(params)))
    if lr_scales is not None:
        parts.append(_scale_by_tree(lr_scales))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule


def _scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Multiplies each update by its scale (a tree of the parameters' structure)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
