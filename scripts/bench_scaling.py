r"""Cost of the RoMA-B encoder (causal Mamba) and of ViT-B against the number of tokens.

  python scripts/bench_scaling.py [--sizes=192,384,768,1024 --batch=1 --repeats=3 \
      --dtype=float32 --scan_chunk=0,256 --models=roma,vit]

Encoders, both 768 wide and 12 blocks deep, patch 16, RGB input, parameters float32 and compute
in `--dtype`:
  roma  `roma.RomaEncoder` of variant B run as in pretraining: `embed(images)` (positions resized
        to the grid), then the causal unidirectional Mamba stack; one row per `--scan_chunk`
        (0: one associative scan over all tokens, whose [B, L, D, 16] intermediates are kept
        for the backward pass; c > 0: chunks of c tokens, each rematerialised in the backward
        pass, so that only the [B, D, 16] state at chunk boundaries is kept).
  vit   `vit.ViTEncoder` (CLS token, 12 heads, MLP 3072, final LN).

For every image size S (L = (S / 16)^2 patch tokens; the ViT adds its CLS token) the script jits
the gradient of mean(output tokens^2) with respect to the parameters (forward + backward) on
standard-normal images [B, S, S, 3] and reports per example:
  ms         the median wall time of `--repeats` calls after one untimed warm-up call, / B
  peak GiB   arguments + outputs - aliased + temporaries of the compiled program
             (`compiled.memory_analysis()`; XLA:CPU's `peak_memory_in_bytes` leaves out the
             temporaries, which hold the activations kept for the backward pass)
  GFLOPs     analytical forward FLOPs (2 per multiply-add): patch embedding plus depth x
             `mamba.mamba_block_flops` (RoMA) or `vit.vit_forward_flops` (ViT)
A program whose footprint exceeds `--max_gib` (default: the device's memory limit; on CPU 90% of
the host memory free at that moment) is compiled but not run: its row has memory and FLOPs only.
Then, per encoder, the exponents k of time ~ N^k and memory ~ N^k: a least-squares line through
(log tokens, log value) of all sizes (time: of the sizes that ran), and in parentheses the slope
between the two largest of them. Times move with other load on the machine; the header gives the
load average before the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from eofm.models import roma, vit
from eofm.models.mamba import mamba_block_flops

MODELS = ("roma", "vit")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
GIB = 2.0**30
HOST_MEMORY_SHARE = 0.9  # of the free host memory a CPU run may take
COLUMNS = ("model", "image px", "tokens", "ms/example fwd+bwd", "peak GiB", "GFLOPs fwd")


@dataclasses.dataclass(frozen=True)
class Encoder:
    """An encoder under test.

    Attributes:
      name: its label in the table.
      patch_size, in_chans: p and C of the images it reads.
      make: builds the module.
      encode: (module, images f32[B, S, S, C]) -> output tokens [B, N, D].
      forward_flops: analytical forward FLOPs of one example with L patches, as a function of L.
    """

    name: str
    patch_size: int
    in_chans: int
    make: Callable[[], nnx.Module]
    encode: Callable[[nnx.Module, jax.Array], jax.Array]
    forward_flops: Callable[[int], float]


@dataclasses.dataclass(frozen=True)
class Row:
    """One measurement, per example; `seconds` is None when the program's footprint exceeded
    `limit_bytes` and it was compiled but not run."""

    model: str
    image_size: int
    tokens: int
    seconds: float | None
    peak_bytes: int
    forward_flops: float
    limit_bytes: float


def patch_embed_flops(num_patches: int, patch_size: int, in_chans: int, dim: int) -> float:
    return 2.0 * num_patches * patch_size**2 * in_chans * dim


def roma_encoder(cfg: roma.RomaConfig) -> Encoder:
    """The RoMA encoder of `cfg` in its pretraining form (causal, all patches, last block out)."""

    def encode(encoder: roma.RomaEncoder, images: jax.Array) -> jax.Array:
        return encoder.run(encoder.embed(images).astype(cfg.dtype), [cfg.depth])[-1]

    def forward_flops(num_patches: int) -> float:
        blocks = cfg.depth * mamba_block_flops(num_patches, cfg.embed_dim, cfg.state_size)
        return blocks + patch_embed_flops(num_patches, cfg.patch_size, cfg.in_chans, cfg.embed_dim)

    return Encoder(
        name=f"roma scan_chunk={cfg.scan_chunk}",
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        make=lambda: roma.RomaEncoder(cfg, rngs=nnx.Rngs(0)),
        encode=encode,
        forward_flops=forward_flops,
    )


def vit_encoder(cfg: vit.ViTConfig) -> Encoder:
    """The ViT encoder of `cfg` on all patches plus CLS."""
    return Encoder(
        name="vit",
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        make=lambda: vit.ViTEncoder(cfg, rngs=nnx.Rngs(0)),
        encode=lambda encoder, images: encoder(images),
        forward_flops=lambda num_patches: vit.vit_forward_flops(cfg, num_patches + 1),
    )


def base_encoders(models: Sequence[str], dtype: str, scan_chunks: Sequence[int]) -> list[Encoder]:
    """RoMA-B (one per scan chunk) and ViT-B/16 on RGB images, in the order of `models`."""
    compute = DTYPES[dtype]
    encoders = []
    for name in models:
        if name == "roma":
            encoders += [
                roma_encoder(
                    roma.RomaConfig(**roma.VARIANTS["B"], in_chans=3, scan_chunk=c, dtype=compute)
                )
                for c in scan_chunks
            ]
        else:
            vit_b = vit.ViTConfig(
                patch_size=16, embed_dim=768, depth=12, num_heads=12, in_chans=3, dtype=compute
            )
            encoders.append(vit_encoder(vit_b))
    return encoders


def gradient_step(encoder: Encoder) -> tuple[Callable, nnx.State]:
    """(jitted (params, images) -> d mean(tokens^2) / d params, the encoder's params)."""
    graphdef, params, rest = nnx.split(encoder.make(), nnx.Param, ...)

    def loss(params: nnx.State, images: jax.Array) -> jax.Array:
        tokens = encoder.encode(nnx.merge(graphdef, params, rest), images)
        return jnp.mean(jnp.square(tokens.astype(jnp.float32)))

    return jax.jit(jax.grad(loss)), params


def footprint_bytes(compiled: jax.stages.Compiled) -> int:
    """Arguments + outputs - aliased bytes + temporaries of a compiled program."""
    stats = compiled.memory_analysis()
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )


def memory_limit_bytes() -> float:
    """Bytes a program may use: the accelerator's memory limit, or on CPU a share of the host
    memory free now (others may be allocating too)."""
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_limit" in stats:
        return float(stats["bytes_limit"])
    return HOST_MEMORY_SHARE * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of `call` (waited for) after one untimed call."""
    jax.block_until_ready(call())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    encoder: Encoder,
    sizes: Sequence[int],
    batch: int,
    repeats: int,
    max_bytes: float | None = None,
) -> Iterator[Row]:
    """One `Row` per image size in `sizes` (pixels per side, multiples of the patch size); a
    program whose footprint exceeds `max_bytes` (default `memory_limit_bytes()`) is not run."""
    bad = [s for s in sizes if s % encoder.patch_size]
    if bad:
        raise ValueError(
            f"{encoder.name}: image sizes {bad} px are not multiples of its patch size"
            f" {encoder.patch_size}"
        )
    step, params = gradient_step(encoder)
    for size in sizes:
        shape = (batch, size, size, encoder.in_chans)
        images = jax.random.normal(jax.random.key(size), shape, jnp.float32)
        compiled = step.lower(params, images).compile()
        peak, limit = footprint_bytes(compiled), max_bytes or memory_limit_bytes()
        seconds = None
        if peak <= limit:
            seconds = median_seconds(functools.partial(compiled, params, images), repeats)
            seconds /= batch
        tokens = (size // encoder.patch_size) ** 2
        yield Row(
            model=encoder.name,
            image_size=size,
            tokens=tokens,
            seconds=seconds,
            peak_bytes=peak,
            forward_flops=encoder.forward_flops(tokens),
            limit_bytes=limit,
        )


def scaling_exponent(x: Sequence[float], y: Sequence[float]) -> float:
    """k of y ~ c x^k: the least-squares slope of log y against log x (2 or more points)."""
    slope, _ = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(slope)


def table_line(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def row_line(row: Row) -> str:
    if row.seconds is None:
        time_cell = f"not run (> {row.limit_bytes / GIB:.1f} GiB limit)"
    else:
        time_cell = f"{row.seconds * 1e3:.1f}"
    return table_line(
        [
            row.model,
            row.image_size,
            row.tokens,
            time_cell,
            f"{row.peak_bytes / GIB:.3f}",
            f"{row.forward_flops / 1e9:.1f}",
        ]
    )


def exponents(tokens: Sequence[int], values: Sequence[float]) -> str:
    """`N^k (k2 between L1 and L2 tokens)`: the fit over all points and the slope between the two
    largest token counts; `tokens` increasing."""
    if len(tokens) < 2:
        return "not fitted (fewer than 2 sizes)"
    overall = scaling_exponent(tokens, values)
    largest = scaling_exponent(tokens[-2:], values[-2:])
    return f"N^{overall:.2f} ({largest:.2f} between {tokens[-2]} and {tokens[-1]} tokens)"


def scaling_summary(rows: Sequence[Row]) -> str:
    """`model: time ~ N^k (...), memory ~ N^k (...)` for the rows of one model; time over the
    rows that ran."""
    rows = sorted(rows, key=lambda r: r.tokens)
    timed = [r for r in rows if r.seconds is not None]
    time_fit = exponents([r.tokens for r in timed], [r.seconds for r in timed])
    memory_fit = exponents([r.tokens for r in rows], [r.peak_bytes for r in rows])
    return f"{rows[0].model}: time ~ {time_fit}, memory ~ {memory_fit}"


def header(args: argparse.Namespace) -> str:
    device = jax.devices()[0]
    return (
        f"jax {jax.__version__} on {device.device_kind} ({device.platform}, cpus={os.cpu_count()});"
        f" batch {args.batch}, compute {args.dtype}, median of {args.repeats} calls after one"
        f" warm-up; load average before the run {os.getloadavg()[0]:.1f}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers")
        if not values or min(values) < 0:
            raise argparse.ArgumentTypeError(f"{text!r}: expected non-negative integers")
        return values

    def models(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in MODELS]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{bad or text!r}: expected some of {MODELS}")
        return values

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=ints, default=[192, 384, 768, 1024], help="image px per side")
    p.add_argument("--batch", type=int, default=1, help="examples per call")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per row (median)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype")
    p.add_argument("--scan_chunk", type=ints, default=[0, 256], help="RoMA chunks (0: one scan)")
    p.add_argument("--models", type=models, default=list(MODELS), help=f"some of {MODELS}")
    p.add_argument(
        "--max_gib",
        type=float,
        default=None,
        help="run only programs under this footprint (default: the device's memory limit, on CPU"
        f" {HOST_MEMORY_SHARE:.0%} of the free host memory)",
    )
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        p.error(f"--batch {args.batch} and --repeats {args.repeats} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(header(args))
    print(table_line(COLUMNS))
    print(table_line(["---"] * len(COLUMNS)), flush=True)
    summaries = []
    for encoder in base_encoders(args.models, args.dtype, args.scan_chunk):
        rows = []
        max_bytes = args.max_gib * GIB if args.max_gib else None
        for row in measure(encoder, args.sizes, args.batch, args.repeats, max_bytes):
            rows.append(row)
            print(row_line(row), flush=True)
        summaries.append(scaling_summary(rows))
    print()
    print("\n".join(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
