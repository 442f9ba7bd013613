"""What every whole-scene run shares: batches split over the local devices, one store shared by
all processes, a progress bar with area rates, peak memory, and fingerprints of settings."""

from __future__ import annotations

import hashlib
import resource
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from eofm.data import cube as cube_lib
from eofm.infer import scene, tiling
from eofm.infer.store import SceneStore


def digest(text: str) -> str:
    """A short hash of `text`, for fingerprints."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def data_parallel(fn: Callable, batch_size: int) -> Callable:
    """batch (an array f32[N, ...] or a dict of them, N <= batch_size) -> numpy fn(batch)[:N],
    the batch padded with zeros to one fixed size divisible by the local devices and split
    over them."""
    devices = jax.local_devices()
    mesh = Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    padded = -(-batch_size // len(devices)) * len(devices)

    def apply(batch):
        n = len(jax.tree.leaves(batch)[0])

        def pad(x: np.ndarray) -> np.ndarray:
            return np.pad(x, ((0, padded - n),) + ((0, 0),) * (x.ndim - 1))

        return np.asarray(fn(jax.device_put(jax.tree.map(pad, batch), sharding)))[:n]

    return apply


def km2_per_px(cube: cube_lib.Cube) -> float | None:
    """Area of one pixel in km^2; None when the CRS is geographic or absent."""
    if cube.crs is None or not cube.crs.is_projected:
        return None
    metres = cube.crs.linear_units_factor[1]
    t = cube.transform
    return abs(t.a * t.e - t.b * t.d) * metres**2 / 1e6


class Progress:
    """A tqdm bar over this process's tiles with windows/s and km^2/s (px/s without a projected
    CRS); `callback` goes to `run_scene` and passes each report on to `then`."""

    def __init__(
        self,
        tiles: list[tiling.Tile],
        done: int,
        km2: float | None,
        then: Callable[[dict[str, Any]], None] | None,
        show: bool,
    ):
        self.px = {(t.row, t.col): (t.y1 - t.y0) * (t.x1 - t.x0) for t in tiles}
        self.km2, self.then, self.px_done = km2, then, 0
        self.bar = tqdm.tqdm(total=len(tiles), initial=done, unit="tile", disable=not show)

    def area_rate(self, seconds: float) -> dict[str, float]:
        """{"km2_per_s" or "px_per_s": rate} of the tiles computed so far."""
        rate = self.px_done / seconds if seconds > 0 else 0.0
        return {"px_per_s": rate} if self.km2 is None else {"km2_per_s": rate * self.km2}

    def callback(self, report: dict[str, Any]) -> None:
        self.px_done += self.px[report["tile"]]
        rates = {"windows/s": report["windows_per_s"], **self.area_rate(report["seconds"])}
        self.bar.set_postfix({k.replace("_per_", "/"): f"{v:.3g}" for k, v in rates.items()})
        self.bar.update(1)
        if self.then is not None:
            self.then(report)

    def close(self) -> None:
        self.bar.close()


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shared_store(open_store: Callable[[], SceneStore], name: str) -> SceneStore:
    """The store `open_store` opens, created by process 0 before any other process opens it;
    `name` tells this barrier from others."""
    first = jax.process_index() == 0
    store = open_store() if first else None
    multihost_utils.sync_global_devices(f"eofm:{name}_store_created")
    return store if first else open_store()


def run_tiles(
    name: str,
    open_store: Callable[[], SceneStore],
    cube: cube_lib.Cube,
    predict: scene.Predictor,
    *,
    read: scene.Reader | None = None,
    window: int,
    stride: int,
    tile: int,
    out_stride: int = 1,
    batch_size: int,
    progress: Callable[[dict[str, Any]], None] | None,
    show_progress: bool,
) -> tuple[SceneStore, dict[str, Any]]:
    """Predicts this process's tiles (i::n) of `cube`'s grid into the store all processes share
    (`shared_store`), with the progress bar, and waits for every process.

    `read` defaults to `cube.read` (a head reading several dates passes its stacked reader).
    Returns the store and `scene.run_scene`'s counts of this process with its area rate.
    """
    store = shared_store(open_store, name)
    index, count = jax.process_index(), jax.process_count()
    mine = tiling.tiles(cube.height, cube.width, tile)[index::count]
    done = store.done_tiles()
    bar = Progress(
        mine, sum((t.row, t.col) in done for t in mine), km2_per_px(cube), progress, show_progress
    )
    try:
        counts = scene.run_scene(
            cube.read if read is None else read,
            cube.height,
            cube.width,
            window,
            stride,
            tile,
            predict,
            store,
            batch_size=batch_size,
            out_stride=out_stride,
            process_index=index,
            process_count=count,
            progress=bar.callback,
        )
    finally:
        bar.close()
    multihost_utils.sync_global_devices(f"eofm:{name}_tiles_done")
    return store, {**counts, **bar.area_rate(counts["seconds"])}
