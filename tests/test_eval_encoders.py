"""Every family's encoder adapter on EuroSAT-MS bands: pooled features and the dense grids."""

from pathlib import Path

import numpy as np
import pytest

from eofm.data.spec import SensorSpec
from eofm.eval import encoders

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "family, missing", [("smarties", ()), ("mae", ("VV", "VH")), ("croma", ()), ("spectralgpt", ())]
)
def test_adapters_give_pooled_features_and_level_grids(family, missing, monkeypatch):
    monkeypatch.chdir(ROOT)
    encoder = encoders.load_encoder(f"random:configs/pretrain/{family}.py:tiny")
    assert encoder.name == family and encoder.step is None
    adapter = encoder.adapt(SensorSpec.full("sentinel2_l1c"))
    assert adapter.missing_bands == missing
    s, p, d = encoder.image_size, encoder.patch_size, encoder.embed_dim
    x = np.random.default_rng(0).normal(size=(2, s, s, 13)).astype(np.float32)
    assert adapter.pooled(encoder.model, x).shape == (2, d)
    taps = encoder.default_taps()
    assert len(taps) == 4 and taps[-1] == encoder.depth - 1
    grids = adapter.levels(encoder.model, x, taps)
    assert [g.shape for g in grids] == [(2, s // p, s // p, d)] * 4
    assert all(np.isfinite(np.asarray(g)).all() for g in grids)


def test_default_taps_follow_pangaea_for_twelve_blocks():
    encoder = encoders.Encoder(
        "mae", "base", None, 224, "zscore", None, ("encoder/",), r"patch_embed", 12, 16, 768, {}
    )
    assert encoder.default_taps() == (3, 5, 7, 11)
    assert encoder.layer_of("encoder/blocks/4/mlp/fc1/kernel") == 5
    assert encoder.layer_of("encoder/norm/scale") == 13
    assert encoder.layer_of("encoder/patch_embed/kernel") == 0


def test_croma_finetuning_reaches_its_pooling_head(monkeypatch):
    """CROMA's pooled features come from the GAP-FFN head after the optical encoder: finetuning
    must update it, at the top of the layer-wise decay."""
    monkeypatch.chdir(ROOT)
    encoder = encoders.load_encoder("random:configs/pretrain/croma.py:tiny")
    assert "optical_gap/" in encoder.encoding_params
    assert encoder.layer_of("encoder/optical_gap/mlp/fc1/kernel") == encoder.depth + 1
    assert encoder.layer_of("encoder/optical/embed/kernel") == 0
    assert encoder.layer_of("encoder/optical/blocks/1/attn/qkv/kernel") == 2


def test_missing_bands_are_named():
    encoder = encoders.load_encoder(f"random:{ROOT}/configs/pretrain/spectralgpt.py:tiny")
    with pytest.raises(ValueError, match="B8A"):
        encoder.adapt(SensorSpec("sentinel2_l1c", ("B02", "B03", "B04", "B08")))
