r"""Whole-scene inference on scenes far larger than memory: georeferenced embeddings of a
pretrained encoder into a resumable Zarr store, or the class map of a trained head as COGs.

  # embeddings
  python scripts/infer_scene.py --encoder=workdirs/smarties --input=scene.tif --output=out.zarr \
      --sensor=sentinel2_l1c [--bands=B02,B03,B04,B08 --resolution=tokens|window \
      --stride_fraction=0.5 --tile=1024 --batch_size=8 --stats=encoder|scene --seed=0]
  # a map with a dense head trained by finetune/main.py (a change head takes --input twice)
  python scripts/infer_scene.py --head=workdirs/floods --input=scene.tif --output=water.tif

--encoder is a pretraining workdir or random:CONFIG[:ARGS]; --input any scene `open_cube` reads
(GeoTIFF, COG, VRT, Zarr, NetCDF). `tokens` writes the encoder's last feature level on its token
grid, blended over overlapping windows; `window` one pooled vector per non-overlapping window
(`eofm.infer.embed`). Besides OUT.zarr goes OUT.summary.json: tiles, windows computed and
skipped, windows/s, km^2/s (px/s for a geographic CRS), peak RSS and the settings.

--head is a finetune workdir of a segmentation or change-detection head; the head's encoder,
bands, normalisation, window and stride are the run's (`eofm.infer.maps`). OUT.tif is the class
map, OUT.probabilities.tif the class probabilities (both tiled COGs with overviews, in the
input's CRS and footprint), OUT.logits.zarr the resumable blended logits, OUT.summary.json the
summary.

Running the same command again after a kill continues at the first tile not done; other settings
on an existing store are refused. Memory stays flat in scene size: one batch of windows and one
tile in flight. Multi-host: --coordinator_address, --num_processes and --process_id as in
pretrain/main.py; each process takes its share of the tiles.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import jax

from eofm import compilation_cache, parallel
from eofm.infer import embed, maps


def names(text: str) -> tuple[str, ...]:
    """Comma-separated band names."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--encoder", default=None, help="pretraining workdir or random:CONFIG[:ARGS]")
    p.add_argument(
        "--input",
        action="append",
        required=True,
        help="the scene (GeoTIFF/COG/VRT/Zarr/NetCDF); twice (before, after) for a change head",
    )
    p.add_argument("--output", required=True, help="OUT.zarr (embeddings) or OUT.tif (--head)")
    p.add_argument("--sensor", default=None, help="registry sensor of the scene (eofm.sensors)")
    p.add_argument("--bands", type=names, default=None, help="bands to read (default: all)")
    p.add_argument("--file_bands", type=names, default=None, help="names of the file's bands")
    p.add_argument("--resolution", choices=embed.RESOLUTIONS, default="tokens")
    p.add_argument("--stride_fraction", type=float, default=0.5, help="window stride / size")
    p.add_argument("--tile", type=int, default=1024, help="tile (store chunk) side in px")
    p.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="windows per model call (default: 8; a head's: its evaluation's)",
    )
    p.add_argument(
        "--stats",
        choices=embed.STATS_SOURCES,
        default=None,
        help="normalisation statistics (default: the encoder's when it has the scene's bands)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the scene's statistics sample")
    p.add_argument("--head", default=None, help="finetune workdir of a dense head: write a map")
    p.add_argument("--cog_blocksize", type=int, default=512, help="COG internal tile side in px")
    p.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Exits naming the culprit when the arguments do not fit the mode (embeddings or map)."""
    if args.head is None:
        if args.encoder is None:
            sys.exit("scripts/infer_scene.py: give --encoder (embeddings) or --head (a map)")
        if args.sensor is None:
            sys.exit("scripts/infer_scene.py: --sensor is required for embeddings")
        if len(args.input) != 1:
            sys.exit(
                f"scripts/infer_scene.py: embeddings take one --input, {len(args.input)} given"
            )
        return
    head_only = {"encoder": args.encoder, "sensor": args.sensor, "bands": args.bands}
    given = [f"--{k}" for k, v in head_only.items() if v is not None]
    if given:
        sys.exit(
            f"scripts/infer_scene.py: {', '.join(given)} cannot be given with --head: the head's"
            " run fixes its encoder, sensor and bands"
        )


def run_embeddings(args: argparse.Namespace) -> dict:
    summary = embed.embed_scene(
        args.encoder,
        args.input[0],
        args.output,
        sensor=args.sensor,
        bands=args.bands,
        file_bands=args.file_bands,
        resolution=args.resolution,
        stride_fraction=args.stride_fraction,
        tile=args.tile,
        batch_size=8 if args.batch_size is None else args.batch_size,
        stats=args.stats,
        seed=args.seed,
    )
    summary["report"] = f"summary in {embed.summary_path(args.output)}"
    return summary


def run_map(args: argparse.Namespace) -> dict:
    summary = maps.map_scene(
        args.head,
        args.input,
        args.output,
        file_bands=args.file_bands,
        tile=args.tile,
        batch_size=args.batch_size,
        blocksize=args.cog_blocksize,
    )
    outputs = summary["outputs"]
    summary["report"] = (
        f"probabilities in {outputs['probabilities']}, logits in {outputs['logits']}, summary in"
        f" {outputs['summary']}"
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    compilation_cache.enable()
    parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    try:
        summary = run_embeddings(args) if args.head is None else run_map(args)
    except (ValueError, FileNotFoundError) as e:
        if jax.process_count() > 1:
            # The other processes wait for this one at a barrier: exit at once rather than in
            # jax's shutdown barrier, which would hold every process for minutes.
            print(f"scripts/infer_scene.py: {e}", file=sys.stderr, flush=True)
            os._exit(1)
        sys.exit(f"scripts/infer_scene.py: {e}")
    area = (
        f"{summary['km2_per_s']:.3g} km^2/s"
        if "km2_per_s" in summary
        else f"{summary['px_per_s']:.3g} px/s"
    )
    print(
        f"{args.output}: {summary['tiles']} tiles, {summary['windows_computed']} windows"
        f" ({summary['windows_skipped']} without data skipped) in {summary['seconds']:.1f} s:"
        f" {summary['windows_per_s']:.3g} windows/s, {area}, peak RSS"
        f" {summary['peak_rss_mib']:.0f} MiB; {summary['report']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
