"""scripts/bench_infer.py: VRT mosaics of the real Sen1Floods11 Sentinel-2 chip (512 x 512, 13
bands) and one small run of its main path with a random tiny SMARTIES (96 px windows)."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from eofm.data import cube

ROOT = Path(__file__).resolve().parents[1]
S2_CHIP = "sen1floods11_sample/S2/Spain_7370579_S2Hand.tif"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_infer", ROOT / "scripts/bench_infer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load_script()


@pytest.fixture(scope="module")
def chip(shared_data):
    return shared_data / S2_CHIP


def test_mosaic_reads_the_chip_across_a_placement_corner(chip, tmp_path):
    vrt = tmp_path / "mosaic.vrt"
    bench.write_mosaic_vrt(chip, vrt, 768, 1024)

    assert bench.placements(768, 1024, 512, 512) == [
        (0, 0, 512, 512),
        (0, 512, 512, 512),
        (512, 0, 256, 512),
        (512, 512, 256, 512),
    ]
    with rasterio.open(vrt) as mosaic, rasterio.open(chip) as src:
        # The chip is referenced, not copied (by its real path: ../shared may be a link).
        assert [Path(f).resolve() for f in mosaic.files] == [vrt.resolve(), chip.resolve()]
        assert (mosaic.height, mosaic.width, mosaic.count) == (768, 1024, 13)
        assert mosaic.crs == src.crs and mosaic.transform == src.transform
        assert mosaic.descriptions == src.descriptions and mosaic.dtypes == src.dtypes
        rows, cols = np.arange(490, 540), np.arange(500, 530)
        window = ((rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1))
        raw = src.read()
        np.testing.assert_array_equal(
            mosaic.read(window=window), raw[:, rows % 512][:, :, cols % 512]
        )
    assert vrt.stat().st_size < 64 * 1024

    tiled = cube.open_cube(vrt, sensor="sentinel2_l1c")
    whole = cube.open_cube(chip, sensor="sentinel2_l1c")
    assert tiled.spec == whole.spec and tiled.spec.bands[8] == "B8A"
    image, valid = tiled.read(slice(500, 530), slice(1000, 1024))
    expected = (
        whole.read(slice(500, 512), slice(488, 512)),
        whole.read(slice(0, 18), slice(488, 512)),
    )
    np.testing.assert_array_equal(image, np.concatenate([expected[0][0], expected[1][0]]))
    np.testing.assert_array_equal(valid, np.concatenate([expected[0][1], expected[1][1]]))
    bench.check_mosaic(vrt, chip, "sentinel2_l1c")


def test_check_mosaic_refuses_a_placement_one_px_off(chip, tmp_path):
    vrt = tmp_path / "shifted.vrt"
    bench.write_mosaic_vrt(chip, vrt, 1024, 1024)
    text = vrt.read_text()
    corner = 'DstRect xOff="512" yOff="512"'
    assert text.count(corner) == 13  # one per band
    vrt.write_text(text.replace(corner, 'DstRect xOff="511" yOff="512"'))
    with pytest.raises(ValueError, match="differ from"):
        bench.check_mosaic(vrt, chip, "sentinel2_l1c")


def test_main_measures_a_small_mosaic_in_a_fresh_process(chip, tmp_path, capsys):
    rows_json = tmp_path / "rows.json"
    args = ["--sizes=256", "--tile=256", f"--scene={chip}", f"--json={rows_json}"]
    assert bench.main(args) == 0

    (row,) = json.loads(rows_json.read_text())
    assert row["size"] == 256 and row["area_unit"] == "px" and row["area"] == 256 * 256
    assert row["windows"] == 25  # windows of 96 px every 48 px cover 256 px in 5
    assert row["seconds"] > 0 and row["windows_per_s"] > 0 and row["area_per_s"] > 0
    assert row["peak_rss_mib"] > 100 and row["store_mib"] > 0
    assert row["process_seconds"] > row["seconds"]
    out = capsys.readouterr().out
    assert "| size (px) | area (Mpx) | windows |" in out
    assert "| 256² | 0.06554 | 25 |" in out
    assert "peak RSS growth 256->256: +0.0%" in out


def test_peak_rss_growth_over_the_tolerance_is_flagged():
    small = bench.Row(1024, 1.0, "px", 1, 1.0, 1.0, 1.0, 700.0, 1.0, 2.0)
    flat, grown = (dataclasses.replace(small, size=8192, peak_rss_mib=m) for m in (770.0, 812.0))
    assert bench.rss_growth_line([small, flat]) == "peak RSS growth 1k->8k: +10.0%"
    assert bench.rss_growth_line([small, grown]).startswith("peak RSS growth 1k->8k: +16.0%  **")
