"""Every family's encoder interface on EuroSAT-MS bands: pooled features and the dense levels,
LLRD layer ids, band matching; encoders load from checkpoints without pretraining data."""

from pathlib import Path

import numpy as np
import pytest
from run_checks import listing

from eofm.data.spec import SensorSpec
from eofm.eval import encoders
from eofm.models import family

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name, missing, stride",
    [("smarties", (), 16), ("mae", ("VV", "VH"), 16), ("croma", (), 8), ("spectralgpt", (), 8)],
)
def test_features_give_pooled_and_level_grids(name, missing, stride, monkeypatch):
    monkeypatch.chdir(ROOT)
    encoder = encoders.load_encoder(f"random:configs/pretrain/{name}.py:tiny")
    assert encoder.name == name and encoder.step is None
    spec = SensorSpec.full("sentinel2_l1c")
    assert encoder.missing_bands(spec) == missing
    s = encoder.image_size
    x = np.random.default_rng(0).normal(size=(2, s, s, 13)).astype(np.float32)
    out = encoder.model.features(x, spec)
    shapes = encoder.shapes(spec)
    d = shapes["pooled"]
    assert out["pooled"].shape == (2, d)
    assert shapes["levels"] == [(stride, d)] * 4
    assert [g.shape for g in out["levels"]] == [(2, s // stride, s // stride, d)] * 4
    assert all(np.isfinite(np.asarray(g)).all() for g in out["levels"])
    np.testing.assert_allclose(encoder.pooled_fn(spec)(x), out["pooled"], rtol=1e-5, atol=1e-5)


def test_default_taps_follow_pangaea_for_twelve_blocks():
    assert family.default_taps(12) == (3, 5, 7, 11)
    layer_of = family.block_layer_of(12, r"^encoder/(patch_embed|cls_token)/", "encoder/")
    assert layer_of("encoder/blocks/4/mlp/fc1/kernel") == 5
    assert layer_of("decoder/blocks/4/mlp/fc1/kernel") == 13
    assert layer_of("encoder/norm/scale") == 13
    assert layer_of("encoder/patch_embed/kernel") == 0


def test_croma_finetuning_reaches_its_pooling_head(monkeypatch):
    """CROMA's pooled features come from the GAP-FFN head after the optical encoder: finetuning
    must update it, at the top of the layer-wise decay."""
    monkeypatch.chdir(ROOT)
    encoder = encoders.load_encoder("random:configs/pretrain/croma.py:tiny")
    assert "optical_gap/" in encoder.encoding_params
    depth = encoder.num_layers - 1
    assert encoder.layer_of("optical_gap/mlp/fc1/kernel") == depth + 1
    assert encoder.layer_of("optical/embed/kernel") == 0
    assert encoder.layer_of("optical/blocks/1/attn/qkv/kernel") == 2


def test_missing_bands_are_named():
    encoder = encoders.load_encoder(f"random:{ROOT}/configs/pretrain/spectralgpt.py:tiny")
    with pytest.raises(ValueError, match="B8A"):
        encoder.missing_bands(SensorSpec("sentinel2_l1c", ("B02", "B03", "B04", "B08")))


def test_an_encoder_reading_none_of_the_bands_is_an_error(monkeypatch):
    """The MAE zero-fills missing bands; with no band in common there is nothing to encode."""
    monkeypatch.chdir(ROOT)
    encoder = encoders.load_encoder("random:configs/pretrain/mae.py:tiny")
    assert encoder.missing_bands(SensorSpec("sentinel2_l1c", ("B02", "B03", "B04"))) == (
        "B01",
        "B05",
        "B06",
        "B07",
        "B08",
        "B8A",
        "B09",
        "B11",
        "B12",
        "VV",
        "VH",
    )
    with pytest.raises(ValueError, match="have none"):
        encoder.missing_bands(SensorSpec("modis_toa", ("b31", "b32")))  # thermal only


def test_pretrained_encoder_loads_from_the_checkpoint_alone(small_smarties_run, tmp_path):
    """The checkpoint carries input specs, normalisation and size: no pretraining data is read
    (the prepared shards are removed first)."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(small_smarties_run, workdir, ignore=shutil.ignore_patterns("data"))
    assert not (workdir / "data").exists()
    encoder = encoders.load_encoder(str(workdir))
    assert encoder.step == 10 and encoder.image_size == 48
    assert encoder.normalization == "percentile_clip"
    assert set(encoder.trained_specs) == {"s2", "s1"}
    assert encoder.trained_specs["s1"].bands == ("VV", "VH")
    spec = SensorSpec.full("sentinel2_l1c")
    x = np.zeros((1, 48, 48, 13), np.float32)
    assert encoder.pooled_fn(spec)(x).shape == (1, 64)


def test_an_unreadable_input_is_an_error_naming_the_encoder_and_both_band_sets(monkeypatch):
    monkeypatch.chdir(ROOT)
    ref = "random:configs/pretrain/mae.py:tiny"
    encoder = encoders.load_encoder(ref)
    with pytest.raises(ValueError) as raised:
        encoder.missing_bands(SensorSpec("modis_toa", ("b31", "b32")))
    message = str(raised.value)
    assert ref in message and "mae:tiny" in message
    assert "B02" in message and "VV" in message  # what the encoder was pretrained on
    assert "'b31', 'b32'" in message  # what the data have


def test_zero_filled_bands_are_listed_per_data_key(monkeypatch):
    monkeypatch.chdir(ROOT)
    encoder = encoders.load_encoder("random:configs/pretrain/mae.py:tiny")
    s2, rgb_like = SensorSpec.full("sentinel2_l1c"), SensorSpec("sentinel2_l1c", ("B04", "B03"))
    missing = encoder.zero_filled_bands([("t1", s2), ("t2", s2), ("t2", rgb_like)])
    assert missing["t1"] == ["VV", "VH"]
    assert missing["t2"][:3] == ["B01", "B02", "B05"] and missing["t2"][-2:] == ["VV", "VH"]
    with pytest.raises(ValueError, match="mae.py:tiny"):
        encoder.zero_filled_bands([("s2", s2), ("tir", SensorSpec("modis_toa", ("b31",)))])


def test_feature_definition_comes_from_the_family(monkeypatch):
    from eofm.models import smarties

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(smarties.Model, "feature_definition", "pooled: a test", raising=False)
    encoder = encoders.load_encoder("random:configs/pretrain/smarties.py:tiny")
    assert encoder.feature_definition == "pooled: a test"


def test_opening_a_run_without_checkpoints_creates_nothing(tmp_path):
    run = tmp_path / "not_a_run"
    run.mkdir()
    (run / "notes.txt").write_text("a directory that holds no pretraining run")
    before = listing(run)
    with pytest.raises(FileNotFoundError, match="not_a_run"):
        encoders.load_encoder(str(run))
    assert listing(run) == before
