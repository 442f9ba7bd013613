r"""Throughput and peak memory of whole-scene inference (`eofm.infer.embed`) against scene size.

  python scripts/bench_infer.py [--sizes=1024,4096,8192 --resolution=tokens \
      --stride_fraction=0.5 --tile=1024 --batch_size=8 --json=rows.json \
      --encoder=random:configs/pretrain/smarties.py:tiny]

Scenes: N x N px GDAL VRT mosaics of a real scene, by default the Sen1Floods11 Sentinel-2 L1C chip
(512 x 512, 13 bands, int16, EPSG:4326) of ../shared/data, placed unmodified on a grid of
512 px cells (the last row and column cut to fit), under the chip's georeference extended to
the mosaic. The VRT only points at the chip: no pixels are copied. Before timing, a window across
a placement corner of each mosaic is checked to read what the chip holds.

Each size runs `scripts/infer_scene.py` in a fresh process, so each peak RSS is that scene's own,
and reports from the summary it writes: windows computed, seconds of the tile loop (JIT
compilation included; loading the encoder and the scene statistics are not), windows/s, km^2/s
(Mpx/s for a geographic CRS), peak RSS and the store's size on disk. Memory must stay flat in
scene size (one batch of windows and one tile in flight): the last line gives the growth of peak
RSS from the smallest to the largest scene and flags growth over 15 %.

Defaults: a random tiny SMARTIES (ViT 192 wide, 6 blocks, 96 px windows, 16 px tokens) at
`tokens` resolution with the CLI's stride_fraction 0.5 (96 px windows every 48 px, blended), in
tiles of 1024 px and batches of 8: the three default sizes take six to seven minutes on 2 CPU
cores, most of it the 8192 px scene's 33k windows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from eofm.data import cube as cube_lib
from eofm.infer import embed, runner

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_SCENE = SHARED_DATA / "sen1floods11_sample/S2/Spain_7370579_S2Hand.tif"
DEFAULT_SENSOR = "sentinel2_l1c"
DEFAULT_ENCODER = f"random:{ROOT / 'configs/pretrain/smarties.py'}:tiny"
MAX_RSS_GROWTH = 0.15
SEAM_MARGIN = 32  # px either side of the placement corner that `check_mosaic` reads
GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One scene: N x N px, its area in `area_unit` ("km2" or "px") and the measured run."""

    size: int
    area: float
    area_unit: str
    windows: int
    seconds: float
    windows_per_s: float
    area_per_s: float
    peak_rss_mib: float
    store_mib: float
    process_seconds: float


def placements(
    height: int, width: int, tile_h: int, tile_w: int
) -> list[tuple[int, int, int, int]]:
    """(row, col, h, w) of each copy of a tile_h x tile_w scene on a height x width grid, the
    last row and column cut to fit."""
    return [
        (r, c, min(tile_h, height - r), min(tile_w, width - c))
        for r in range(0, height, tile_h)
        for c in range(0, width, tile_w)
    ]


def write_mosaic_vrt(source: str | os.PathLike, path: str | os.PathLike, height: int, width: int):
    """Writes a height x width px VRT at `path` of `source` repeated on a grid from its top-left
    corner, with its bands (descriptions, nodata, data type) and its georeference extended."""
    source = Path(source).resolve()
    with rasterio.open(source) as src:
        profile, descriptions, nodata = src.profile, src.descriptions, src.nodatavals
        crs, transform = src.crs, src.transform
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs is not None:
        ET.SubElement(root, "SRS").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(map(repr, transform.to_gdal()))
    grid = placements(height, width, profile["height"], profile["width"])
    for i in range(1, profile["count"] + 1):
        band = ET.SubElement(
            root, "VRTRasterBand", dataType=GDAL_TYPES[profile["dtype"]], band=str(i)
        )
        if descriptions[i - 1]:
            ET.SubElement(band, "Description").text = descriptions[i - 1]
        if nodata[i - 1] is not None:
            ET.SubElement(band, "NoDataValue").text = repr(nodata[i - 1])
        for row, col, h, w in grid:
            simple = ET.SubElement(band, "SimpleSource")
            ET.SubElement(simple, "SourceFilename", relativeToVRT="0").text = str(source)
            ET.SubElement(simple, "SourceBand").text = str(i)
            ET.SubElement(simple, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
            ET.SubElement(
                simple, "DstRect", xOff=str(col), yOff=str(row), xSize=str(w), ySize=str(h)
            )
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="unicode")


def seam_window(cube: cube_lib.Cube, tile_h: int, tile_w: int) -> tuple[slice, slice]:
    """Rows and columns within SEAM_MARGIN px of the first placement corner (tile_h, tile_w),
    or of the far corner of a mosaic no larger than one placement."""
    row, col = min(tile_h, cube.height), min(tile_w, cube.width)
    rows = slice(max(row - SEAM_MARGIN, 0), min(row + SEAM_MARGIN, cube.height))
    cols = slice(max(col - SEAM_MARGIN, 0), min(col + SEAM_MARGIN, cube.width))
    return rows, cols


def check_mosaic(mosaic: str | os.PathLike, source: str | os.PathLike, sensor: str) -> None:
    """Raises ValueError unless `open_cube` reads the mosaic with the source's bands and georef,
    and a window across a placement corner as the source's pixels there."""
    tiled, whole = (cube_lib.open_cube(p, sensor=sensor) for p in (mosaic, source))
    if tiled.spec != whole.spec or tiled.crs != whole.crs or tiled.transform != whole.transform:
        raise ValueError(
            f"{mosaic}: reads as {tiled.spec} {tiled.crs} {tiled.transform}; its source"
            f" {source} as {whole.spec} {whole.crs} {whole.transform}"
        )
    rows, cols = seam_window(tiled, whole.height, whole.width)
    image, valid = tiled.read(rows, cols)
    source_image, source_valid = whole.read(slice(0, whole.height), slice(0, whole.width))
    at = np.ix_(
        np.arange(rows.start, rows.stop) % whole.height,
        np.arange(cols.start, cols.stop) % whole.width,
    )
    if not (np.array_equal(image, source_image[at]) and np.array_equal(valid, source_valid[at])):
        raise ValueError(f"{mosaic}: rows {rows}, columns {cols} differ from {source}")


def embed_command(args: argparse.Namespace, scene: Path, output: Path) -> list[str]:
    """The `scripts/infer_scene.py` command line embedding `scene` into `output`."""
    return [
        sys.executable,
        str(ROOT / "scripts/infer_scene.py"),
        f"--encoder={args.encoder}",
        f"--input={scene}",
        f"--output={output}",
        f"--sensor={args.sensor}",
        f"--resolution={args.resolution}",
        f"--stride_fraction={args.stride_fraction}",
        f"--tile={args.tile}",
        f"--batch_size={args.batch_size}",
    ]


def folder_mib(path: Path) -> float:
    """Bytes of the files under `path`, in MiB."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def measure(args: argparse.Namespace, size: int, folder: Path) -> Row:
    """Builds and checks the size x size mosaic, embeds it in a fresh process and reads the
    summary that process writes."""
    scene, output = folder / f"mosaic_{size}.vrt", folder / f"mosaic_{size}.zarr"
    write_mosaic_vrt(args.scene, scene, size, size)
    check_mosaic(scene, args.scene, args.sensor)
    km2 = runner.km2_per_px(cube_lib.open_cube(scene, sensor=args.sensor))
    start = time.perf_counter()
    subprocess.run(embed_command(args, scene, output), check=True)
    process_seconds = time.perf_counter() - start
    summary = json.loads(embed.summary_path(output).read_text())
    px = size * size
    return Row(
        size=size,
        area=px if km2 is None else px * km2,
        area_unit="px" if km2 is None else "km2",
        windows=summary["windows_computed"],
        seconds=summary["seconds"],
        windows_per_s=summary["windows_per_s"],
        area_per_s=summary["px_per_s"] if km2 is None else summary["km2_per_s"],
        peak_rss_mib=summary["peak_rss_mib"],
        store_mib=folder_mib(output),
        process_seconds=process_seconds,
    )


def header(args: argparse.Namespace, unit: str) -> list[str]:
    """The settings line, and the table's column names and rule."""
    stride = f", stride_fraction {args.stride_fraction}" if args.resolution == "tokens" else ""
    settings = (
        f"{args.encoder} on VRT mosaics of {Path(args.scene).name} ({args.sensor}):"
        f" {args.resolution} resolution{stride}, tile {args.tile}, batch {args.batch_size},"
        f" {os.cpu_count()} CPUs, each size in a fresh process"
    )
    area, rate = ("area (km²)", "km²/s") if unit == "km2" else ("area (Mpx)", "Mpx/s")
    names = ["size (px)", area, "windows", "seconds", "windows/s", rate, "peak RSS MiB"]
    names.append("store MiB")
    return [settings, "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def row_line(row: Row) -> str:
    """One Markdown table row (areas in km², or in Mpx without a projected CRS)."""
    scale = 1.0 if row.area_unit == "km2" else 1e-6
    cells = [
        f"{row.size}²",
        f"{row.area * scale:.4g}",
        f"{row.windows}",
        f"{row.seconds:.1f}",
        f"{row.windows_per_s:.1f}",
        f"{row.area_per_s * scale:.3g}",
        f"{row.peak_rss_mib:.0f}",
        f"{row.store_mib:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def size_label(size: int) -> str:
    """1024 -> "1k", 1000 -> "1000"."""
    return f"{size // 1024}k" if size % 1024 == 0 else str(size)


def rss_growth_line(rows: Sequence[Row]) -> str:
    """Growth of peak RSS from the smallest to the largest scene, flagged over MAX_RSS_GROWTH."""
    small, large = min(rows, key=lambda r: r.size), max(rows, key=lambda r: r.size)
    growth = large.peak_rss_mib / small.peak_rss_mib - 1
    line = f"peak RSS growth {size_label(small.size)}->{size_label(large.size)}: {growth:+.1%}"
    if growth > MAX_RSS_GROWTH:
        line += f"  ** over {MAX_RSS_GROWTH:.0%}: peak memory is not flat in scene size **"
    return line


def table(args: argparse.Namespace, rows: Sequence[Row]) -> str:
    """The settings, the Markdown table and the RSS growth line."""
    lines = header(args, rows[0].area_unit) + [row_line(r) for r in rows]
    return "\n".join([*lines, "", rss_growth_line(rows)])


def sizes(text: str) -> tuple[int, ...]:
    """Comma-separated scene sides in px."""
    return tuple(int(s) for s in text.split(",") if s.strip())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=sizes, default=(1024, 4096, 8192), help="scene sides in px")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="workdir or random:CONFIG[:ARGS]")
    p.add_argument("--resolution", choices=embed.RESOLUTIONS, default="tokens")
    p.add_argument("--stride_fraction", type=float, default=0.5, help="window stride / size")
    p.add_argument("--tile", type=int, default=1024, help="tile (store chunk) side in px")
    p.add_argument("--batch_size", type=int, default=8, help="windows per encoder call")
    p.add_argument("--scene", default=str(DEFAULT_SCENE), help="the real scene to mosaic")
    p.add_argument("--sensor", default=DEFAULT_SENSOR, help="registry sensor of --scene")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as folder:
        rows = [measure(args, size, Path(folder)) for size in args.sizes]
    print(table(args, rows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
