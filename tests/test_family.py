"""The model-family protocol: a new family is one module plus one config (here two toy families
kept outside eofm, in tests/families/), and pretraining, probes, dense heads and LLRD finetuning
run on it with no family-specific code in eofm/train, eofm/eval or eofm/data."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from eofm.data.spec import SensorSpec
from eofm.eval import classification, dense, encoders
from eofm.models import family
from eofm.train import loop, pretrain

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = Path(__file__).resolve().parent / "families"


def _config(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_config", FAMILIES / f"{name}_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("tiny")


def _pretrain(name: str, workdir: Path) -> Path:
    config = _config(name)
    result = loop.train(config, workdir, pretrain.workload(config, workdir))
    assert result.step == config.total_steps and np.isfinite(result.metrics["loss"])
    return workdir


@pytest.fixture(scope="module")
def toyvit_run(tmp_path_factory):
    return _pretrain("toyvit", tmp_path_factory.mktemp("toyvit"))


@pytest.fixture(scope="module")
def toypyramid_run(tmp_path_factory):
    return _pretrain("toypyramid", tmp_path_factory.mktemp("toypyramid"))


def _segmentation(finetune_config, encoder: Path):
    config = finetune_config("sen1floods11")
    config.encoder = str(encoder)
    config.fit.total_steps = 3
    config.fit.batch_size = 8
    config.head.channels = 16
    config.window_stride = 1.0
    return config


def test_toy_vit_family_probes_segments_and_finetunes(toyvit_run, finetune_config, tmp_path):
    encoder = encoders.load_encoder(str(toyvit_run))
    assert encoder.name == "families.toyvit" and encoder.image_size == 32
    spec = SensorSpec.full("sentinel2_l1c")
    assert encoder.shapes(spec) == {"pooled": 32, "levels": [(8, 32)] * 4}

    knn = finetune_config("eurosat_ms", "method=knn")
    knn.encoder = str(toyvit_run)
    result = classification.run(knn, tmp_path / "knn")
    assert 0.0 <= result["metrics"]["oa"] <= 1.0
    assert result["encoder"]["model"] == "families.toyvit"

    tuned = finetune_config("eurosat_ms", "method=finetune")
    tuned.encoder = str(toyvit_run)
    tuned.fit.update(total_steps=4, batch_size=8, log_every=1)
    result = classification.run(tuned, tmp_path / "finetune")
    assert len(result["finetune"]["history"]) == 4
    assert (tmp_path / "finetune" / "fit" / "checkpoints" / "4").is_dir()

    seg = dense.run(_segmentation(finetune_config, toyvit_run), tmp_path / "seg")
    assert 0.0 <= seg["metrics"]["miou_macro"] <= 1.0


def test_two_level_family_runs_upernet(toypyramid_run, finetune_config, tmp_path):
    encoder = encoders.load_encoder(str(toypyramid_run))
    spec = SensorSpec("sentinel2_l1c", ("B02", "B03", "B04", "B08", "B11"))
    assert encoder.shapes(spec) == {"pooled": 32, "levels": [(4, 16), (8, 32)]}
    with pytest.raises(ValueError, match="B08"):
        encoder.missing_bands(SensorSpec("sentinel2_l1c", ("B02", "B03", "B04")))
    result = dense.run(_segmentation(finetune_config, toypyramid_run), tmp_path / "seg")
    assert 0.0 <= result["metrics"]["miou_macro"] <= 1.0


def test_llrd_layers_of_the_toy_families(toyvit_run, toypyramid_run):
    vit = encoders.load_encoder(str(toyvit_run))
    assert vit.num_layers == 5
    assert [vit.layer_of(p) for p in ("encoder/patch_embed/proj/kernel", "encoder/blocks/2/x")] == [
        0,
        3,
    ]
    pyramid = encoders.load_encoder(str(toypyramid_run))
    assert [pyramid.layer_of(p) for p in ("embed/x", "stage1/x", "merge/x", "norm/x")] == [
        0,
        1,
        2,
        3,
    ]


def test_generic_packages_name_no_family():
    """eofm/train, eofm/eval and eofm/data reach families only through `eofm.models.family`."""
    names = "|".join(family.available())
    pattern = re.compile(rf"(import|from) .*\b({names})\b|[\"']({names})[\"']")
    for package in ("train", "eval", "data"):
        for path in (ROOT / "eofm" / package).rglob("*.py"):
            assert not pattern.search(path.read_text()), path


def test_family_lookup_and_config_errors_name_the_culprit():
    assert set(family.available()) >= {"mae", "smarties", "croma", "spectralgpt"}
    with pytest.raises(ValueError, match=r"unknown model_name 'swin'.*'croma'"):
        family.get("swin")
    mae = family.get("mae")
    fields = family.config_fields(mae, "tiny")
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        family.config_fields(mae, "huge")
    inputs = {"s2": SensorSpec.full("sentinel2_l2a")}
    cfg = family.make_config(mae, fields, inputs, 96)
    assert cfg.in_chans == 12 and cfg.embed_dim == 192
    with pytest.raises(ValueError, match=r"\['embed_dimm'\]"):
        family.make_config(mae, {**fields, "embed_dimm": 3}, inputs, 96)
    with pytest.raises(ValueError, match=r"sets \['in_chans'\], which the data determine"):
        family.make_config(mae, {**fields, "in_chans": 3}, inputs, 96)
    croma = family.get("croma")
    with pytest.raises(ValueError, match="optical input 's2' must have 12 bands"):
        family.make_config(
            croma,
            family.config_fields(croma, "tiny"),
            {"s2": SensorSpec.full("sentinel2_l1c"), "s1": SensorSpec.full("sentinel1_grd")},
            120,
        )
