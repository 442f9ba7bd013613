"""Observability: metrics.jsonl, TensorBoard events, a progress line with MFU and ETA.

MFU = model FLOPs per second / peak FLOPs per second. Model FLOPs per step come from each model's
written-down formula (e.g. `eofm.models.mae.mae_flops_per_example` x global batch); the peak is
given in the config or measured once as the throughput of a large float32 matmul on every local
device, which on a CPU is the honest ceiling.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def measure_peak_flops(n: int = 2048, repeats: int = 5, dtype: jnp.dtype = jnp.float32) -> float:
    """Measured FLOP/s of an n^3 matmul in `dtype`, summed over this process's devices."""
    devices = jax.local_devices()
    a = jax.device_put(jnp.ones((n, n), dtype), devices[0])
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        matmul(a).block_until_ready()
    per_device = 2 * n**3 * repeats / (time.perf_counter() - start)
    if devices[0].platform == "cpu":
        return per_device  # Simulated CPU devices share the same cores.
    return per_device * len(devices)


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to TensorBoard.

    Only process 0 writes. On resume, `truncate_after(step)` drops records of steps that the
    restored checkpoint had not reached (they will be logged again, identically); a fresh start
    drops them all (`truncate_after(0)`).
    """

    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / "metrics.jsonl"
        self._active = jax.process_index() == 0
        self._tb = None
        if self._active:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.fspath(Path(workdir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Keeps the records of steps up to `step` (0: none); a line cut short by a crash or a
        full disk is dropped with a warning."""
        if not self._active or not self.path.exists():
            return
        kept = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            record = _parse_record(line, f"{self.path}:{number}")
            if record is not None and record["step"] <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self._active:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl in order; torn lines are dropped with a warning."""
    lines = Path(path).read_text().splitlines()
    records = (_parse_record(line, f"{path}:{n}") for n, line in enumerate(lines, start=1))
    return [r for r in records if r is not None]


def _parse_record(line: str, where: str) -> dict[str, Any] | None:
    """The record of one metrics.jsonl line; None for a blank or torn line."""
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        logging.warning("%s is not a whole JSON record (a write cut short): dropped", where)
        return None


def _plain(value: Any) -> Any:
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """The progress line on stdout: at every logged step and at least every `every_s` seconds
    between them, so that a slow run (a notebook's, too) is never silent for long.

    The rate and ETA count the steps after this run's first, which includes compilation.
    """

    def __init__(
        self, total: int, batch_size: int, examples: str, *, show: bool, every_s: float = 30.0
    ):
        self.total, self.batch_size, self.examples = total, batch_size, examples
        self.enabled, self.every_s = show, every_s
        self._shown_at = time.perf_counter()
        self._first: tuple[int, float] | None = None  # (step, time) once the first step is done
        self._last: tuple[int, float] | None = None

    def step_done(self, step: int) -> None:
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
        self._last = (step, now)

    def due(self) -> bool:
        return self.enabled and time.perf_counter() - self._shown_at >= self.every_s

    def seconds_per_step(self) -> float | None:
        (first, t0), (last, t1) = self._first, self._last
        return (t1 - t0) / (last - first) if last > first else None

    def show(self, step: int, metrics: dict[str, Any]) -> None:
        """Prints "step S/T | loss | lr | N <examples>/s | MFU | ETA" (MFU when measured)."""
        if not self.enabled:
            return
        per_step = self.seconds_per_step()
        rate = f"{self.batch_size / per_step:.1f}" if per_step else "-"
        eta = format_eta(per_step * (self.total - step)) if per_step else "-"
        mfu = metrics.get("mfu")
        print(
            f"step {step}/{self.total} | loss {float(metrics['loss']):.4f}"
            f" | lr {float(metrics['lr']):.2e} | {rate} {self.examples}/s"
            + (f" | MFU {100 * float(mfu):.1f}%" if mfu is not None else "")
            + f" | ETA {eta}",
            flush=True,
        )
        self._shown_at = time.perf_counter()
