"""Georeferenced embeddings of a whole scene: a frozen encoder's features, window by window at its
native size S, written tile by tile to a resumable Zarr store (`embed_scene`).

Resolutions:
  tokens  the encoder's last feature level on its token grid, p = S / h px per cell, blended
          over windows every round(S * stride_fraction) px (a multiple of p): [y, x, feature]
          with ceil(H / p) x ceil(W / p) cells.
  window  one pooled vector per window; windows of S px tile the scene without overlap
          (stride = p = S), so each window is one cell: ceil(H / S) x ceil(W / S) cells.

Normalisation: the encoder's pretraining method, with the checkpoint's per-band statistics when
it has them for the scene's sensor and bands (`stats="encoder"`), else statistics of a seeded
sample of `SCENE_STATS_WINDOWS` windows of the scene (`stats="scene"`); the summary and the
store's attributes say which. Invalid pixels are 0 after normalisation (as in training), and a
cell none of whose pixels is valid is nodata: NaN, and False in the store's `valid`.

Parallelism: each batch of windows is split over the local devices (data parallel); process i of
n takes tiles i::n of one shared store, which process 0 creates first and finalises last.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from eofm import files
from eofm.data import cube as cube_lib
from eofm.data import normalize, sources, stats
from eofm.data.spec import SensorSpec, valid_key
from eofm.eval import encoders
from eofm.infer import runner, scene
from eofm.infer.store import SceneStore

RESOLUTIONS = ("tokens", "window")
STATS_SOURCES = ("encoder", "scene")
SCENE_STATS_WINDOWS = 64
# Normalisations that need no statistics.
FIXED_NORMALIZATIONS = ("minmax_per_image", "satvision_toa")
IMAGE_KEY = "image"
VARIABLE = "embedding"


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Window S, stride, output cell p and tile T in px, and F features per cell."""

    window: int
    stride: int
    out_stride: int
    tile: int
    features: int


@dataclasses.dataclass(frozen=True)
class Normalization:
    """The pretraining `method`, its per-band statistics and where they came from."""

    method: str
    band_stats: dict[str, dict[str, float]]
    source: str

    def transform(self, spec: SensorSpec) -> normalize.Normalize:
        """The transform of one window {IMAGE_KEY: f32[S, S, C], its `_valid`}."""
        return normalize.Normalize.of_band_stats(IMAGE_KEY, spec, self.method, self.band_stats)

    def digest(self) -> str:
        """A short hash of the statistics (they decide every value)."""
        return runner.digest(json.dumps(self.band_stats, sort_keys=True))


def geometry(
    encoder: encoders.Encoder,
    spec: SensorSpec,
    resolution: str,
    stride_fraction: float,
    tile: int,
) -> Geometry:
    """The window geometry of `resolution` (see the module docstring); the tile is rounded up
    to a multiple of the output cell."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution={resolution!r}; expected one of {RESOLUTIONS}")
    if not 0 < stride_fraction <= 1:
        raise ValueError(f"stride_fraction={stride_fraction} must be in (0, 1]")
    if tile <= 0:
        raise ValueError(f"tile={tile} must be a positive number of px")
    window = encoder.image_size
    shapes = encoder.shapes(spec)
    if resolution == "window":
        out_stride, stride, features = window, window, shapes["pooled"]
    else:
        out_stride, features = shapes["levels"][-1]
        stride = max(round(window * stride_fraction / out_stride), 1) * out_stride
    tile = -(-tile // out_stride) * out_stride
    return Geometry(window, stride, out_stride, tile, features)


def scene_band_stats(
    cube: cube_lib.Cube, window: int, seed: int, num_windows: int = SCENE_STATS_WINDOWS
) -> dict[str, dict[str, float]]:
    """{band: statistics} of the valid pixels of `num_windows` seeded random windows."""
    sample = sources.CubeWindowSource(
        cube, window=window, num_windows=num_windows, seed=seed, min_valid_fraction=0.0
    )
    windows = (sample[i] for i in range(len(sample)))
    chunks = ((w[IMAGE_KEY], w[valid_key(IMAGE_KEY)]) for w in windows)
    try:
        return stats.compute_band_stats(chunks, cube.spec.bands)
    except ValueError as e:
        raise ValueError(
            f"{cube.path}: {num_windows} windows of {window} px (seed {seed}) sampled for the"
            f" normalisation statistics: {e}"
        ) from e


def normalization(
    encoder: encoders.Encoder, cube: cube_lib.Cube, stats_source: str | None, seed: int
) -> Normalization:
    """The encoder's method with statistics from `stats_source` ("encoder", "scene", or None:
    the encoder's when it has them for the scene's bands, else the scene's)."""
    if stats_source not in (None, *STATS_SOURCES):
        raise ValueError(f"stats={stats_source!r}; expected one of {STATS_SOURCES} or None")
    method = encoder.normalization
    if method in FIXED_NORMALIZATIONS:
        return Normalization(method, {}, f"none ({method} needs no statistics)")
    checkpoint_stats = encoder.stats_for(cube.spec)
    if stats_source == "encoder" and checkpoint_stats is None:
        has = {
            k: f"{s.sensor} {sorted(encoder.band_stats.get(k, {}))}"
            for k, s in encoder.trained_specs.items()
        }
        raise ValueError(
            f"stats='encoder': encoder {encoder.ref} has no statistics of {cube.spec.sensor}"
            f" bands {list(cube.spec.bands)} (it has {has}); use stats='scene'"
        )
    if stats_source != "scene" and checkpoint_stats is not None:
        return Normalization(method, checkpoint_stats, f"encoder checkpoint (step {encoder.step})")
    band_stats = scene_band_stats(cube, encoder.image_size, seed)
    source = f"scene sample ({SCENE_STATS_WINDOWS} windows of {encoder.image_size} px, seed {seed})"
    return Normalization(method, band_stats, source)


def cells_with_data(valid: np.ndarray, out_stride: int) -> np.ndarray:
    """bool[N, S/p, S/p]: output cells with at least one valid pixel of bool[N, S, S, C]."""
    n, s = valid.shape[:2]
    c = s // out_stride
    return valid.any(-1).reshape(n, c, out_stride, c, out_stride).any(axis=(2, 4))


def make_predictor(
    encoder: encoders.Encoder,
    spec: SensorSpec,
    norm: Normalization,
    resolution: str,
    geo: Geometry,
    batch_size: int,
) -> scene.Predictor:
    """predict(f32[N, S, S, C] raw, bool valid) -> f32[N, S/p, S/p, F] features, NaN on cells
    without a valid pixel."""
    transform = norm.transform(spec)

    def features(model, images):
        out = model.features(images, spec)
        return out["pooled"][:, None, None] if resolution == "window" else out["levels"][-1]

    encode = runner.data_parallel(encoders.jit_with_modules(features, encoder.model), batch_size)

    def predict(images: np.ndarray, valid: np.ndarray) -> np.ndarray:
        normalised = np.stack(
            [
                transform.map({IMAGE_KEY: x, valid_key(IMAGE_KEY): v})[IMAGE_KEY]
                for x, v in zip(images, valid)
            ]
        )
        out = encode(normalised)
        return np.where(cells_with_data(valid, geo.out_stride)[..., None], out, np.nan)

    return predict


def fingerprint(
    encoder: encoders.Encoder,
    cube: cube_lib.Cube,
    geo: Geometry,
    resolution: str,
    norm: Normalization,
) -> str:
    """Everything that decides the stored values, readable in a refusal to resume."""
    return (
        f"{encoder.ref}@step={encoder.step} on {os.path.abspath(cube.path)}"
        f" {list(cube.spec.bands)} {resolution} window={geo.window} stride={geo.stride}"
        f" {norm.method} stats={norm.source} #{norm.digest()}"
    )


def summary_path(output: str | os.PathLike) -> Path:
    """`OUT.summary.json` beside the store `OUT.zarr`."""
    output = Path(output)
    return output.with_name(output.stem + ".summary.json")


def open_store(output, cube: cube_lib.Cube, geo: Geometry, fp: str) -> SceneStore:
    """The embedding store of `cube` at `output`: new, or the one to resume."""
    return SceneStore(
        output,
        height=cube.height,
        width=cube.width,
        features=geo.features,
        tile=geo.tile,
        fingerprint=fp,
        out_stride=geo.out_stride,
        variable=VARIABLE,
    )


def embed_scene(
    encoder: str | encoders.Encoder,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    sensor: str,
    bands: tuple[str, ...] | None = None,
    file_bands: tuple[str, ...] | None = None,
    resolution: str = "tokens",
    stride_fraction: float = 0.5,
    tile: int = 1024,
    batch_size: int = 8,
    stats: str | None = None,
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Embeds the scene `input` into the Zarr store `output`, resuming at the tiles not done.

    Args:
      encoder: a reference for `encoders.load_encoder` (WORKDIR or random:CONFIG[:ARGS]), or a
        loaded encoder.
      input: a scene `cube_lib.open_cube` reads (GeoTIFF, COG, VRT, Zarr, NetCDF).
      output: the store's directory (e.g. OUT.zarr); its summary goes to OUT.summary.json.
      sensor, bands, file_bands: as `cube_lib.open_cube`.
      resolution: "tokens" or "window" (module docstring).
      stride_fraction: the window stride as a fraction of S ("tokens" only).
      tile: the tile side in px (the store's chunk), rounded up to a multiple of the cell.
      batch_size: windows per encoder call.
      stats: "encoder", "scene" or None (the encoder's when it has them); see `normalization`.
      seed: the seed of the scene sample of `stats="scene"`.
      progress: called after each tile with `run_scene`'s report.
      show_progress: draw the tqdm bar.

    Returns:
      The summary (also written beside the store by process 0): `run_scene`'s counts and rates,
      km2_per_s (or px_per_s), peak_rss_mib, the normalisation and the settings.
    """
    if not isinstance(encoder, encoders.Encoder):
        encoder = encoders.load_encoder(encoder)
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    cube = cube_lib.open_cube(input, sensor=sensor, bands=bands, file_bands=file_bands)
    zero_filled = encoder.missing_bands(cube.spec)  # names encoder and bands if it cannot read
    geo = geometry(encoder, cube.spec, resolution, stride_fraction, tile)
    norm = normalization(encoder, cube, stats, seed)
    fp = fingerprint(encoder, cube, geo, resolution, norm)
    store, counts = runner.run_tiles(
        "embed",
        lambda: open_store(output, cube, geo, fp),
        cube,
        make_predictor(encoder, cube.spec, norm, resolution, geo, batch_size),
        window=geo.window,
        stride=geo.stride,
        tile=geo.tile,
        out_stride=geo.out_stride,
        batch_size=batch_size,
        progress=progress,
        show_progress=show_progress,
    )
    attrs = {
        "encoder": encoder.ref,
        "step": encoder.step,
        "feature_definition": feature_definition(encoder, resolution),
        "resolution": resolution,
        "normalisation": f"{norm.method}, statistics: {norm.source}",
    }
    summary = {
        **counts,
        "peak_rss_mib": runner.peak_rss_mib(),
        "output": str(output),
        "settings": {
            "input": str(input),
            "sensor": cube.spec.sensor,
            "bands": list(cube.spec.bands),
            "zero_filled_bands": list(zero_filled),
            **dataclasses.asdict(geo),
            "batch_size": batch_size,
            "devices": jax.local_device_count(),
            "process_count": jax.process_count(),
            **attrs,
        },
    }
    if jax.process_index() == 0:
        names = [
            f"{'pooled' if resolution == 'window' else 'token'}_{i}" for i in range(geo.features)
        ]
        store.finalize(cube.crs, cube.transform, feature_names=names, attrs=attrs)
        files.write_text_atomic(summary_path(output), json.dumps(summary, indent=2) + "\n")
    return summary


def feature_definition(encoder: encoders.Encoder, resolution: str) -> str:
    """What a stored feature vector is."""
    which = (
        "the pooled vector of the window covering the cell"
        if resolution == "window"
        else "the last feature level at the cell, blended over overlapping windows"
    )
    return f"{which}. {encoder.feature_definition}".strip()
