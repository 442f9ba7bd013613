"""Scaled dot-product attention with one implementation per backend.

Shapes: B batch, Lq query and Lk key tokens, H heads, Dh head width; q [B, Lq, H, Dh], k and v
[B, Lk, H, Dh], as `jax.nn.dot_product_attention`.

"blockwise" is flash attention written in XLA: an online softmax over key blocks inside a loop over
query blocks, never holding more than one [B, H, bq, bk] block of scores. Its `jax.custom_vjp`
saves only the per-row maximum and log-normaliser and recomputes each block's probabilities in the
backward pass, so the compiled step keeps no [Lq, Lk] score matrix.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn")

# Logit of a masked (query, key) pair, as jax.nn: a fully masked row attends uniformly.
_MASKED = -0.7 * float(np.finfo(np.float32).max)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    implementation: str = "auto",
    block_q: int = 256,
    block_k: int = 256,
) -> jax.Array:
    """softmax(q k^T / sqrt(Dh) + bias, masked) v, the softmax in float32.  -> [B, Lq, H, Dh].

    Args:
      q, k, v: [B, Lq, H, Dh], [B, Lk, H, Dh], [B, Lk, H, Dh].
      bias: additive logit bias, broadcastable to [B, H, Lq, Lk] (each dim full or 1).
      mask: bool, broadcastable likewise; False = not attended.
      implementation: one of `IMPLEMENTATIONS`; "auto" is `choose_implementation`.
      block_q, block_k: the largest query / key block of "blockwise" (lengths are split into the
        fewest equal blocks no larger, the last one padded). Blocks of 128 to 512 time alike at
        L = 1024 on CPU; 256 keeps sequences up to 256 in one block.
    Returns: the attended values, in q's dtype.
    """
    check_implementation(implementation)
    if not q.ndim == k.ndim == v.ndim == 4:
        raise ValueError(f"q, k, v must be [B, L, H, Dh], got {q.shape}, {k.shape}, {v.shape}")
    if implementation == "auto":
        implementation = choose_implementation(q.shape[1], k.shape[1], q.dtype)
        if implementation == "cudnn":
            try:
                return _cudnn(q, k, v, bias, mask)
            except (ValueError, NotImplementedError, RuntimeError):  # shape cuDNN does not take
                implementation = "xla"
    if implementation == "cudnn":
        return _cudnn(q, k, v, bias, mask)
    if implementation == "xla":
        return _xla(q, k, v, bias, mask)
    return _blockwise(q, k, v, bias, mask, block_q, block_k)


def check_implementation(name: str) -> None:
    """Raises a ValueError listing the choices unless `name` is one of `IMPLEMENTATIONS`."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {name!r} is not one of {IMPLEMENTATIONS}")


def choose_implementation(q_len: int, k_len: int, dtype, backend: str | None = None) -> str:
    """The implementation "auto" runs on `backend` (default: JAX's default backend).

    GPU: "cudnn" for bf16 / f16 (falling back to "xla" where cuDNN refuses the shape), else "xla".
    CPU / TPU: "blockwise" from Lq * Lk >= 2^17 query-key pairs (~360^2), "xla" below. Measured on
    a 2-core CPU (scripts/bench_attention.py, f32 forward + backward, H 8-16, Dh 32-64): "xla" is
    5-10 % faster while one block holds the scores (L <= 256, same temporaries) and up to
    L ~ 320; the two are level at L ~ 450; beyond, "blockwise" is faster (1.15x at L = 768,
    1.6-1.9x at the SpectralGPT decoder's L = 1024) and keeps 2-8x fewer temporaries (196
    queries over 1024 keys: level in time, half the temporaries). TPU follows the CPU rule (not
    measured there).
    """
    backend = backend or jax.default_backend()
    if backend in ("gpu", "cuda", "rocm"):
        return "cudnn" if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
    return "blockwise" if q_len * k_len >= 2**17 else "xla"


def _cudnn(q, k, v, bias, mask):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="cudnn")


def _scaled(q: jax.Array) -> jax.Array:
    return q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)


def _xla(q, k, v, bias, mask):
    # Scaling q rather than the logits keeps one [B, H, Lq, Lk] buffer fewer for the backward pass.
    s = jnp.einsum("bqhd,bkhd->bhqk", _scaled(q), k, preferred_element_type=jnp.float32)
    if bias is not None:
        s = s + bias.astype(jnp.float32)
    if mask is not None:
        s = jnp.where(mask, s, _MASKED)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v).astype(q.dtype)


# ---- blockwise ----------------------------------------------------------------------------------


def _blockwise(q, k, v, bias, mask, block_q, block_k):
    """Pads and transposes to [B, H, L', Dh] (q pre-scaled), runs `_flash`, undoes both; autodiff
    carries the cotangents back through these steps."""
    lq, lk = q.shape[1], k.shape[1]
    nq, nk = -(-lq // block_q), -(-lk // block_k)
    geom = _Geometry(lk=lk, bq=-(-lq // nq), bk=-(-lk // nk))
    lq_pad, lk_pad = nq * geom.bq, nk * geom.bk
    heads = lambda t, n: _pad(jnp.swapaxes(t, 1, 2), 2, n)
    q = heads(_scaled(q), lq_pad)
    k, v = heads(k, lk_pad), heads(v, lk_pad)
    if bias is not None:
        bias = _pad(_pad(bias.astype(jnp.float32), 2, lq_pad), 3, lk_pad)
    if mask is not None:
        mask = _pad(_pad(mask, 2, lq_pad), 3, lk_pad)
    return jnp.swapaxes(_flash(q, k, v, bias, mask, geom)[:, :, :lq], 1, 2)


class _Geometry(NamedTuple):
    lk: int  # keys before padding
    bq: int  # query block
    bk: int  # key block


def _pad(x: jax.Array, axis: int, length: int) -> jax.Array:
    """x zero- (False-) padded to `length` along `axis`, unless that dim is broadcast (1)."""
    if x.shape[axis] in (1, length):
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    return jnp.pad(x, pad)


def _rows(x: jax.Array, i, size: int, axis: int = 2) -> jax.Array:
    """Block i (of `size`) of x along `axis`, or x itself where that dim is broadcast (1)."""
    if x.shape[axis] == 1:
        return x
    return jax.lax.dynamic_slice_in_dim(x, i * size, size, axis)


def _tile(x: jax.Array | None, i, bi: int, j, bj: int) -> jax.Array | None:
    """Block (i, j) of a [., ., rows, cols] bias or mask, keeping broadcast dims."""
    return None if x is None else _rows(_rows(x, i, bi, 2), j, bj, 3)


def _logits(a, b, bias, mask, valid):
    """f32 a b^T [B, H, na, nb] of blocks a [B, H, na, Dh], b [B, H, nb, Dh], plus the bias tile,
    masked pairs at `_MASKED`, and -inf where `valid` (bool, broadcastable) is False."""
    s = jnp.einsum("bhxd,bhyd->bhxy", a, b, preferred_element_type=jnp.float32)
    if bias is not None:
        s = s + bias
    if mask is not None:
        s = jnp.where(mask, s, _MASKED)
    return s if valid is None else jnp.where(valid, s, -jnp.inf)


def _key_valid(geom: _Geometry, j):
    """bool [bk]: which keys of block j are real (None without padding)."""
    if geom.lk % geom.bk == 0:
        return None
    return j * geom.bk + jnp.arange(geom.bk) < geom.lk


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, bias, mask, geom):
    """softmax(q k^T + bias, masked) v of padded [B, H, L', Dh] blocks.  -> [B, H, Lq', Dh]."""
    return _flash_fwd(q, k, v, bias, mask, geom)[0]


def _flash_fwd(q, k, v, bias, mask, geom):
    """Query blocks i, each an online softmax over key blocks j. Saves (m, log l) [2, B, H, Lq']:
    each row's largest logit and log sum exp(logit - m)."""
    b, h, _, d = q.shape
    bq, bk = geom.bq, geom.bk

    def q_block(i, carry):
        out, stats = carry
        qb = _rows(q, i, bq)

        def k_block(j, acc):
            m, l, o = acc
            s = _logits(
                qb,
                _rows(k, j, bk),
                _tile(bias, i, bq, j, bk),
                _tile(mask, i, bq, j, bk),
                _key_valid(geom, j),
            )
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum(
                "bhqk,bhkd->bhqd",
                p.astype(v.dtype),
                _rows(v, j, bk),
                preferred_element_type=jnp.float32,
            )
            return m_new, l * corr + p.sum(-1), o * corr[..., None] + pv

        rows = (b, h, bq)
        init = (jnp.full(rows, -jnp.inf), jnp.zeros(rows), jnp.zeros(rows + (d,)))
        m, l, o = jax.lax.fori_loop(0, k.shape[2] // bk, k_block, init)
        out = jax.lax.dynamic_update_slice_in_dim(
            out, (o / l[..., None]).astype(q.dtype), i * bq, 2
        )
        stats = jax.lax.dynamic_update_slice_in_dim(stats, jnp.stack([m, jnp.log(l)]), i * bq, 3)
        return out, stats

    init = (jnp.zeros(q.shape, q.dtype), jnp.zeros((2, b, h, q.shape[2]), jnp.float32))
    out, stats = jax.lax.fori_loop(0, q.shape[2] // bq, q_block, init)
    return out, (q, k, v, bias, mask, out, stats)


def _flash_bwd(geom, res, dout):
    """Query blocks i, each a loop over key blocks j. The key-side gradients accumulate transposed,
    dk^T = q^T ds and dv^T = do^T p, so that no matmul takes a transposed operand (XLA:CPU runs
    those several times slower)."""
    q, k, v, bias, mask, out, stats = res
    bq, bk = geom.bq, geom.bk
    delta = jnp.einsum("bhqd,bhqd->bhq", dout.astype(jnp.float32), out.astype(jnp.float32))
    q_t, dout_t = jnp.swapaxes(q, 2, 3), jnp.swapaxes(dout, 2, 3)  # [B, H, Dh, Lq']
    f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)

    def q_block(carry, i):
        qb, dob, deltab = _rows(q, i, bq), _rows(dout, i, bq), _rows(delta, i, bq)
        qb_t, dob_t = _rows(q_t, i, bq, axis=3), _rows(dout_t, i, bq, axis=3)
        m, log_l = _rows(stats, i, bq, axis=3)

        def k_block(j, acc):
            dqb, dk_t, dv_t, dbias = acc
            kb, vb = _rows(k, j, bk), _rows(v, j, bk)
            mask_ij = _tile(mask, i, bq, j, bk)
            s = _logits(qb, kb, _tile(bias, i, bq, j, bk), mask_ij, _key_valid(geom, j))
            p = jnp.exp(s - m[..., None] - log_l[..., None])
            ds = p * (f32("bhqd,bhkd->bhqk", dob, vb) - deltab[..., None])
            if mask_ij is not None:
                ds = jnp.where(mask_ij, ds, 0.0)
            dv_t = _add_tile(dv_t, f32("bhdq,bhqk->bhdk", dob_t, p.astype(dout.dtype)), 0, 0, j, bk)
            dk_t = _add_tile(dk_t, f32("bhdq,bhqk->bhdk", qb_t, ds.astype(q.dtype)), 0, 0, j, bk)
            dqb = dqb + f32("bhqk,bhkd->bhqd", ds.astype(k.dtype), kb)
            if dbias is not None:
                dbias = _add_tile(dbias, ds, i, bq, j, bk)
            return dqb, dk_t, dv_t, dbias

        init = (jnp.zeros(qb.shape, jnp.float32),) + carry
        dqb, *carry = jax.lax.fori_loop(0, k.shape[2] // bk, k_block, init)
        return tuple(carry), dqb

    zeros = lambda shape: jnp.zeros(shape, jnp.float32)
    k_t_shape = jnp.swapaxes(k, 2, 3).shape
    init = (zeros(k_t_shape), zeros(k_t_shape), None if bias is None else zeros(bias.shape))
    (dk_t, dv_t, dbias), dq = jax.lax.scan(q_block, init, jnp.arange(q.shape[2] // bq))
    dq = jnp.moveaxis(dq, 0, 2).reshape(q.shape)  # [nq, B, H, bq, Dh] -> [B, H, Lq', Dh]
    dk, dv = (jnp.swapaxes(t, 2, 3).astype(k.dtype) for t in (dk_t, dv_t))
    return dq.astype(q.dtype), dk, dv, dbias, None


def _add_tile(acc, ds, i, bi, j, bj):
    """acc + ds at block (i, j), ds summed over the dims broadcast (1) in acc."""
    ds = ds.sum(tuple(a for a in range(4) if acc.shape[a] == 1), keepdims=True)
    start = [0, 0, i * bi if acc.shape[2] > 1 else 0, j * bj if acc.shape[3] > 1 else 0]
    return jax.lax.dynamic_update_slice(
        acc, jax.lax.dynamic_slice(acc, start, ds.shape) + ds, start
    )


_flash.defvjp(_flash_fwd, _flash_bwd)
