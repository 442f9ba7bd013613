r"""Train-step speed and MFU of MAE, and ViT encoder speed in JAX against timm, as two tables.

  python scripts/bench_train.py [--variants=tiny,base --batch_size=8 --steps=3 --warmup_steps=1]

MAE: the jitted train step of `pretrain/main.py` (`loop.setup` + `loop.compile_step`, AdamW,
norm-pix MAE loss) for the variants of configs/pretrain/mae.py, fed one synthetic float32 batch of
the configured image size and input bands (14: the BigEarthNet S2 + S1 stack); no data is read.
Each variant runs twice: waiting for every step's loss on the host (a per-step NaN guard) and
checking it one step behind, as `loop.train` does; the table gives both mean step times over
`--steps` consecutive steps and their ratio. Encoder: forward + backward of mean(encoder(images))
for the plain ViT of the MAE variants (192 wide x 6 blocks, ViT-B/16, ViT-L/16) on
224 x 224 x 3 images, in JAX and in PyTorch eager with timm's `VisionTransformer` of the same
shape (CLS token, token pooling, no head, no dropout) on all CPU threads; JAX and torch steps
alternate, medians over `--steps` timed steps.

Timed steps follow `--warmup_steps` untimed ones (the first compiles); they move with other load on
the machine, whose average the first line reports. FLOPs
are the models' matmul counts (`flops_per_example`, 3 x `vit_forward_flops`); MFU divides their
rate by the measured throughput of a large float32 matmul (`measure_peak_flops`).

The encoder table needs torch and timm and is skipped without them:

  pip install -e '.[bench]' && pip install --no-deps torchvision==0.16.2

timm imports torchvision. The Linux torchvision wheels on PyPI link against the CUDA build of
torch, so beside the CPU torch 2.13.0 their C++ ops do not load, and torchvision >= 0.17 then fails
at import ("operator torchvision::nms does not exist"); 0.16.2 only warns, and the ViT uses none
of its ops. `--no-deps` keeps torch 2.13.0 (`pip check` reports torchvision's torch==2.1.2 pin).
A torchvision built for the installed CPU torch works as well.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from eofm import parallel
from eofm.data import datasets, inputs
from eofm.models import family
from eofm.models import mae as mae_lib
from eofm.models import vit as vit_lib
from eofm.train import loop
from eofm.train import metrics as metrics_lib

_CONFIG_FILE = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "mae.py"
_INSTALL = "pip install -e '.[bench]' && pip install --no-deps torchvision==0.16.2"
# variant: (batch size, timed steps) when --batch_size / --steps are not given.
_DEFAULTS = {"tiny": (32, 10), "base": (8, 3)}
_VIT_NAMES = {"tiny": "ViT-192x6", "base": "ViT-B", "large": "ViT-L"}
_ENCODER_IMAGE_SIZE = 224
_ENCODER_CHANNELS = 3

_VARIANTS = flags.DEFINE_list("variants", ["tiny", "base"], "MAE config and ViT variants.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "MAE batch; default 32 (tiny), 8 (others).")
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps per row; default 10 (tiny), 3 (others).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 1, "Untimed steps before timing (the 1st compiles).")
_ENCODER_BATCH = flags.DEFINE_integer("encoder_batch_size", 8, "Batch size of the encoder rows.")
_CONFIG = flags.DEFINE_string("config_file", str(_CONFIG_FILE), "MAE config: get_config(variant).")


def _defaults(variant: str) -> tuple[int, int]:
    batch_size, steps = _DEFAULTS.get(variant, _DEFAULTS["base"])
    return _BATCH_SIZE.value or batch_size, _STEPS.value or steps


def _median_seconds(run_steps: list[Callable[[int], Any]], steps: int) -> list[float]:
    """Median wall time of each run_step(i) over `steps` calls after `--warmup_steps` untimed ones.

    The functions take turns step by step, so that they see the same background load.
    """
    for i in range(_WARMUP.value):
        for run_step in run_steps:
            run_step(i)
    times = [[] for _ in run_steps]
    for i in range(_WARMUP.value, _WARMUP.value + steps):
        for run_step, seconds in zip(run_steps, times):
            start = time.perf_counter()
            run_step(i)
            seconds.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def _load_config_module(path: str):
    spec = importlib.util.spec_from_file_location("mae_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _no_dataset(process_index: int, process_count: int):
    del process_index, process_count
    raise NotImplementedError("the benchmark feeds a synthetic batch")


def _mae_train_step(config, sync_every_step: bool) -> tuple[Callable[[int], None], Callable, float]:
    """The loop's jitted step (`loop.setup` + `loop.compile_step`) on a synthetic batch of the
    config's input bands -> (run_step(i), finish(), FLOPs per example).

    run_step dispatches one step; with `sync_every_step` it waits for that step's loss, as a NaN
    guard reading every loss would; otherwise it checks the previous step's loss, as `loop.train`
    does. finish() waits for the last step.
    """
    source = datasets.make_source(config.data.source, **config.data.source_args)
    specs = inputs.input_specs(config.data, source.specs)
    size = config.data.image_size
    make_model = family.model_builder(config, specs)
    workload = loop.Workload(
        name=config.model_name,
        variant=config.variant,
        make_model=make_model,
        loss_fn=lambda model, batch, rng: model.loss(batch, rng),
        make_dataset=_no_dataset,
        input_keys=tuple(specs),
    )
    mesh = loop.make_mesh(config)
    plan = loop.setup(config, workload, mesh)
    state = jax.jit(plan.init, out_shardings=plan.state_shardings)()
    train_step = loop.compile_step(config, workload, plan)
    batch_sharding = parallel.batch_sharding(mesh)
    rng = jax.random.key(0)
    batch = {
        k: jax.device_put(
            jax.random.normal(
                jax.random.fold_in(rng, i), (config.batch_size, size, size, len(spec.bands))
            ),
            batch_sharding,
        )
        for i, (k, spec) in enumerate(specs.items())
    }
    base_key = jax.random.key(config.seed)
    previous = None

    def run_step(i: int) -> None:
        nonlocal state, previous
        with jax.set_mesh(mesh):  # As in `loop.train`.
            state, step_metrics = train_step(state, batch, jax.random.fold_in(base_key, i))
        if sync_every_step:
            float(step_metrics["loss"])
        elif previous is not None:
            float(previous["loss"])
        previous = step_metrics

    def finish() -> None:
        jax.block_until_ready(state)

    with nnx.use_eager_sharding(False):
        flops = nnx.eval_shape(lambda: make_model(nnx.Rngs(0))).flops_per_example(size)
    return run_step, finish, flops


def _jax_encoder_step(cfg: vit_lib.ViTConfig, batch_size: int) -> Callable[[int], None]:
    """Jitted gradient of mean(ViTEncoder(images)) with respect to the parameters."""
    graphdef, params, rest = nnx.split(vit_lib.ViTEncoder(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)

    def loss_fn(params, images):
        return jnp.mean(nnx.merge(graphdef, params, rest)(images))

    grad_fn = jax.jit(jax.grad(loss_fn))
    shape = (batch_size, _ENCODER_IMAGE_SIZE, _ENCODER_IMAGE_SIZE, cfg.in_chans)
    images = jax.random.normal(jax.random.key(0), shape)
    return lambda i: jax.block_until_ready(grad_fn(params, images))


def _import_torch_timm():
    """(torch, timm), or None after printing why not and how to install them."""
    try:
        with warnings.catch_warnings():
            # torchvision's image extension is not needed.
            warnings.filterwarnings("ignore", message="Failed to load image Python extension")
            import timm
            import timm.models.vision_transformer
            import torch
    except (ImportError, RuntimeError) as e:
        print(f"\nencoder table skipped: torch / timm unavailable ({type(e).__name__}: {e}).")
        print(f"Install them with: {_INSTALL}  (see this script's docstring)")
        return None
    return torch, timm


def _torch_encoder_step(torch, vit_cls, cfg: vit_lib.ViTConfig, batch_size: int):
    """Eager forward + backward of mean(VisionTransformer(images)), with the shapes of `cfg`."""
    model = vit_cls(
        img_size=_ENCODER_IMAGE_SIZE,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        class_token=True,
        global_pool="token",
        num_classes=0,
        drop_rate=0.0,
        pos_drop_rate=0.0,
        proj_drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
    )
    model.train()
    images = torch.randn(batch_size, cfg.in_chans, _ENCODER_IMAGE_SIZE, _ENCODER_IMAGE_SIZE)

    def run_step(i: int) -> None:
        del i
        model.zero_grad(set_to_none=True)
        model(images).mean().backward()

    return run_step


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A markdown table under `title`: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    rule = [":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]]
    print(f"\n{title}")
    print(line(header))
    print("|" + "|".join(rule) + "|")
    for row in rows:
        print(line(row))


def _mean_seconds(run_step: Callable[[int], None], finish: Callable, steps: int) -> float:
    """Mean wall time per step of `steps` consecutive steps after `--warmup_steps` untimed ones
    (steps are dispatched back to back, so the host may run ahead of the device)."""
    for i in range(_WARMUP.value):
        run_step(i)
    finish()
    start = time.perf_counter()
    for i in range(_WARMUP.value, _WARMUP.value + steps):
        run_step(i)
    finish()
    return (time.perf_counter() - start) / steps


def _mae_table(peak: float) -> None:
    configs = _load_config_module(_CONFIG.value)
    rows = []
    for variant in _VARIANTS.value:
        batch_size, steps = _defaults(variant)
        config = configs.get_config(variant)
        config.batch_size = batch_size
        timings = {}
        for sync in (True, False):
            run_step, finish, flops_per_example = _mae_train_step(config, sync)
            timings[sync] = _mean_seconds(run_step, finish, steps)
        seconds = timings[False]
        flops = flops_per_example * batch_size / seconds
        size = config.data.image_size
        rows.append(
            [
                variant,
                f"{size}x{size}",
                str(batch_size),
                str(steps),
                f"{timings[True] * 1e3:.1f}",
                f"{seconds * 1e3:.1f}",
                f"{timings[True] / seconds:.3f}",
                f"{batch_size / seconds:.1f}",
                f"{flops / 1e9:.1f}",
                f"{flops / peak:.1%}",
            ]
        )
    _print_table(
        "MAE train step (loop.setup + loop.compile_step, synthetic float32 input): with a sync on"
        " every step's loss vs the loop's check one step behind",
        [
            "config",
            "input",
            "batch",
            "steps",
            "synced ms",
            "loop ms",
            "synced/loop",
            "images/s",
            "GFLOP/s",
            "MFU",
        ],
        rows,
    )


def _encoder_table(peak: float) -> None:
    imported = _import_torch_timm()
    if imported is None:
        return
    torch, timm = imported
    vit_cls = timm.models.vision_transformer.VisionTransformer
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    batch_size = _ENCODER_BATCH.value
    rows = []
    for variant in _VARIANTS.value:
        shape = {
            k: mae_lib.VARIANTS[variant][k]
            for k in ("patch_size", "embed_dim", "depth", "num_heads")
        }
        cfg = vit_lib.ViTConfig(**shape, in_chans=_ENCODER_CHANNELS)
        num_patches = (_ENCODER_IMAGE_SIZE // cfg.patch_size) ** 2
        flops = 3 * vit_lib.vit_forward_flops(cfg, 1 + num_patches) * batch_size
        steps = _defaults(variant)[1]
        jax_s, torch_s = _median_seconds(
            [
                _jax_encoder_step(cfg, batch_size),
                _torch_encoder_step(torch, vit_cls, cfg, batch_size),
            ],
            steps,
        )
        rows.append(
            [
                f"{_VIT_NAMES.get(variant, variant)}/{cfg.patch_size}",
                str(steps),
                f"{jax_s * 1e3:.1f}",
                f"{torch_s * 1e3:.1f}",
                f"{jax_s / torch_s:.2f}",
                f"{flops / jax_s / 1e9:.1f}",
                f"{flops / torch_s / 1e9:.1f}",
                f"{flops / jax_s / peak:.1%}",
                f"{flops / torch_s / peak:.1%}",
            ]
        )
    size, chans = _ENCODER_IMAGE_SIZE, _ENCODER_CHANNELS
    _print_table(
        f"ViT encoder forward + backward on {batch_size} x {size}x{size}x{chans}: JAX (jit) vs"
        f" torch {torch.__version__} eager + timm {timm.__version__}"
        f" ({torch.get_num_threads()} threads)",
        [
            "model",
            "steps",
            "JAX ms",
            "torch ms",
            "JAX/torch",
            "JAX GFLOP/s",
            "torch GFLOP/s",
            "JAX MFU",
            "torch MFU",
        ],
        rows,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    peak = metrics_lib.measure_peak_flops()
    print(
        f"measured peak: {peak / 1e9:.1f} GFLOP/s (2048^3 float32 matmul, jax {jax.__version__},"
        f" {jax.devices()[0].device_kind}, cpus={os.cpu_count()})  warm-up steps={_WARMUP.value}"
        f"  load average before the run: {os.getloadavg()[0]:.1f}"
    )
    _mae_table(peak)
    _encoder_table(peak)


if __name__ == "__main__":
    app.run(main)
