"""Frozen-encoder kNN probe on the real EuroSAT-MS sample: random init and a pretrained run."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from eofm.eval import probe
from eofm.train import loop, pretrain

ROOT = Path(__file__).resolve().parents[1]


def test_stratified_split_keeps_every_class():
    labels = np.repeat(np.arange(4), [3, 6, 9, 1])
    train, test = probe.stratified_split(labels, 1 / 3, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    assert sorted(np.bincount(labels[test]).tolist()) == [1, 1, 2, 3]


def _knn_config(encoder, shared_data):
    spec = importlib.util.spec_from_file_location(
        "knn_config", ROOT / "configs" / "finetune" / "eurosat_ms_knn.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.encoder = encoder
    config.data.source_args = {"root": str(shared_data / "eurosat_ms")}
    return config


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, pretrain_config):
    """A short SMARTIES pretraining run on the BigEarthNet pairs (small model)."""
    workdir = tmp_path_factory.mktemp("smarties")
    config = pretrain_config("smarties", "tiny")
    config.model.update(
        dict(embed_dim=64, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    )
    config.data.image_size = 48
    config.batch_size = 8
    config.total_steps = 10
    config.warmup_steps = 2
    config.peak_flops = 1e11
    loop.train(config, workdir, pretrain.build_task(config, workdir))
    return workdir


def test_knn_probe_random_and_pretrained(pretrained_run, tmp_path, shared_data, monkeypatch):
    monkeypatch.chdir(ROOT)  # "random:configs/..." references are relative to the project
    results = {}
    for name, encoder in [
        ("random", "random:configs/pretrain/mae.py:tiny"),
        ("pretrained", str(pretrained_run)),
    ]:
        config = _knn_config(encoder, shared_data)
        report = probe.run_probe(config, tmp_path / name)
        results[name] = report
        on_disk = json.loads((tmp_path / name / "report.json").read_text())
        assert on_disk["metrics"] == report["metrics"]
        assert (tmp_path / name / "report.md").read_text().count("|") > 10
        assert report["data"]["train"] + report["data"]["test"] == 216
        assert report["metrics"]["oa"] > 0.25  # chance is 0.1
    assert results["random"]["encoder"]["checkpoint_step"] is None
    # The MAE baseline was trained on S2 + S1: EuroSAT has no S1, so VV and VH are zero-filled.
    assert list(results["random"]["encoder"]["zero_filled_bands"]) == ["VV", "VH"]
    assert results["pretrained"]["encoder"]["checkpoint_step"] == 10
    assert results["pretrained"]["data"]["normalization"] == "percentile_clip"
    assert results["pretrained"]["data"]["resize_to"] == 48


def test_linear_probe_end_to_end(pretrained_run, tmp_path, shared_data):
    config = _knn_config(str(pretrained_run), shared_data)
    config.probe = "linear"
    config.linear.steps = 50
    report = probe.run_probe(config, tmp_path)
    assert report["task"] == "linear_classification"
    assert report["linear"]["weight_decay"] in report["linear"]["validation_accuracy"]
    assert report["metrics"]["oa"] > 0.25  # chance is 0.1
