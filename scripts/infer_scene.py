r"""Georeferenced embeddings of a whole scene, far larger than memory, into a Zarr store.

  python scripts/infer_scene.py --encoder=workdirs/smarties --input=scene.tif --output=out.zarr \
      --sensor=sentinel2_l1c [--bands=B02,B03,B04,B08 --resolution=tokens|window \
      --stride_fraction=0.5 --tile=1024 --batch_size=8 --stats=encoder|scene --seed=0]

--encoder is a pretraining workdir or random:CONFIG[:ARGS]; --input any scene `open_cube` reads
(GeoTIFF, COG, VRT, Zarr, NetCDF). `tokens` writes the encoder's last feature level on its token
grid, blended over overlapping windows; `window` one pooled vector per non-overlapping window
(`eofm.infer.embed`). Besides OUT.zarr goes OUT.summary.json: tiles, windows computed and
skipped, windows/s, km^2/s (px/s for a geographic CRS), peak RSS and the settings.

Running the same command again after a kill continues at the first tile not done; other settings
on an existing store are refused. Memory stays flat in scene size: one batch of windows and one
tile in flight. Multi-host: --coordinator_address, --num_processes and --process_id as in
pretrain/main.py; each process takes its share of the tiles.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eofm import parallel
from eofm.infer import embed


def names(text: str) -> tuple[str, ...]:
    """Comma-separated band names."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--encoder", required=True, help="pretraining workdir or random:CONFIG[:ARGS]")
    p.add_argument("--input", required=True, help="the scene (GeoTIFF/COG/VRT/Zarr/NetCDF)")
    p.add_argument("--output", required=True, help="the Zarr store to write (OUT.zarr)")
    p.add_argument("--sensor", required=True, help="registry sensor of the scene (eofm.sensors)")
    p.add_argument("--bands", type=names, default=None, help="bands to read (default: all)")
    p.add_argument("--file_bands", type=names, default=None, help="names of the file's bands")
    p.add_argument("--resolution", choices=embed.RESOLUTIONS, default="tokens")
    p.add_argument("--stride_fraction", type=float, default=0.5, help="window stride / size")
    p.add_argument("--tile", type=int, default=1024, help="tile (store chunk) side in px")
    p.add_argument("--batch_size", type=int, default=8, help="windows per encoder call")
    p.add_argument(
        "--stats",
        choices=embed.STATS_SOURCES,
        default=None,
        help="normalisation statistics (default: the encoder's when it has the scene's bands)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the scene's statistics sample")
    p.add_argument("--head", default=None, help="a trained head to apply (not available yet)")
    p.add_argument("--coordinator_address", default=None, help="HOST:PORT of process 0")
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.head is not None:
        sys.exit(
            f"scripts/infer_scene.py: --head={args.head}: applying a trained head is not"
            " available yet; leave --head out to write the encoder's embeddings"
        )
    parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    try:
        summary = embed.embed_scene(
            args.encoder,
            args.input,
            args.output,
            sensor=args.sensor,
            bands=args.bands,
            file_bands=args.file_bands,
            resolution=args.resolution,
            stride_fraction=args.stride_fraction,
            tile=args.tile,
            batch_size=args.batch_size,
            stats=args.stats,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as e:
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
        f" {summary['peak_rss_mib']:.0f} MiB; summary in {embed.summary_path(args.output)}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
