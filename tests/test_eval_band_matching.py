"""Bands of other sensors read by wavelength: RGB photos and Landsat into Sentinel-2 encoders."""

import json

import numpy as np
import pytest

from eofm.data.spec import SensorSpec
from eofm.eval import classification, encoders
from eofm.models import family

S2_L1C = SensorSpec.full("sentinel2_l1c")


def test_rgb_and_landsat_bands_fill_the_sentinel2_bands_of_their_wavelength():
    index = dict(zip(S2_L1C.bands, family.band_indices(SensorSpec.full("rgb"), S2_L1C)))
    assert {b: i for b, i in index.items() if i is not None} == {"B02": 2, "B03": 1, "B04": 0}
    landsat = SensorSpec("landsat7_etm", ("B1", "B2", "B3", "B4", "B5", "B7"))
    assert family.stand_ins(landsat, S2_L1C) == {
        "B02": "B1",
        "B03": "B2",
        "B04": "B3",
        "B08": "B4",  # NIR: Landsat's 835 nm centre is nearer B08's than B8A's
        "B11": "B5",
        "B12": "B7",
    }
    # Names first: Sentinel-2 L2A data fill their own bands, and none stands in for cirrus B10.
    l2a = family.band_indices(SensorSpec.full("sentinel2_l2a"), S2_L1C)
    assert l2a[S2_L1C.bands.index("B10")] is None
    assert family.stand_ins(SensorSpec.full("sentinel2_l2a"), S2_L1C) == {}
    # Radar stands in for no optical band.
    assert set(family.band_indices(SensorSpec.full("sentinel1_grd"), S2_L1C)) == {None}


def test_a_sentinel2_mae_reads_eurosat_rgb_jpegs_through_three_matched_bands(
    finetune_config, tmp_path
):
    config = finetune_config("eurosat_rgb", "method=knn")
    config.encoder = "random:configs/pretrain/mae.py:tiny"
    encoder = encoders.load_encoder(config.encoder)
    rgb = SensorSpec.full("rgb")
    assert encoder.stand_in_bands([("rgb", rgb)]) == {
        "rgb": {"B02": "blue", "B03": "green", "B04": "red"}
    }
    # The MAE's other 11 inputs (9 Sentinel-2 bands, VV, VH) are zero-filled, not all 14.
    assert len(encoder.zero_filled_bands([("rgb", rgb)])["rgb"]) == 11
    images = np.random.default_rng(0).normal(size=(2, 96, 96, 3)).astype(np.float32)
    pooled = np.asarray(encoder.pooled_fn(rgb)(images))
    assert not np.allclose(pooled[0], pooled[1])  # the pixels reach the features

    result = classification.run(config, tmp_path)
    card = json.loads((tmp_path / "report.json").read_text())["encoder"]
    assert card["stand_in_bands"] == {"rgb": {"B02": "blue", "B03": "green", "B04": "red"}}
    assert "B04" not in card["missing_bands"]["rgb"] and len(card["missing_bands"]["rgb"]) == 11
    report_md = (tmp_path / "report.md").read_text()
    assert "**Bands matched by wavelength**" in report_md and "red for B04" in report_md
    assert result["metrics"]["oa"] > 0.1


def test_an_encoder_reading_none_of_the_bands_still_stops_with_their_names():
    encoder = encoders.load_encoder("random:configs/pretrain/mae.py:tiny")
    with pytest.raises(ValueError, match="cannot read modis_toa data"):
        encoder.zero_filled_bands([("image", SensorSpec("modis_toa", ("b31", "b32")))])
