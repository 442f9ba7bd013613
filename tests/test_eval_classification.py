"""Classification on the real samples: kNN, linear probe, finetuning (LLRD), multi-label, REOBench."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from eofm.eval import classification, encoders, trainer
from eofm.train import optim

ROOT = Path(__file__).resolve().parents[1]


def test_stratified_split_keeps_every_class():
    labels = np.repeat(np.arange(4), [3, 6, 9, 1])
    train, test = classification.stratified_split(labels, 1 / 3, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    assert sorted(np.bincount(labels[test]).tolist()) == [1, 1, 2, 3]


def test_knn_probe_random_and_pretrained(
    small_smarties_run, tmp_path, finetune_config, monkeypatch
):
    monkeypatch.chdir(ROOT)  # "random:configs/..." references are relative to the project
    results = {}
    for name, encoder in [
        ("random", "random:configs/pretrain/mae.py:tiny"),
        ("pretrained", str(small_smarties_run)),
    ]:
        config = finetune_config("eurosat_ms_knn")
        config.encoder = encoder
        report = classification.run(config, tmp_path / name)
        results[name] = report
        on_disk = json.loads((tmp_path / name / "report.json").read_text())
        assert on_disk["metrics"] == report["metrics"]
        assert (tmp_path / name / "report.md").read_text().count("|") > 10
        assert (tmp_path / name / "confusion.png").read_bytes()[:4] == b"\x89PNG"
        assert report["data"]["train"] + report["data"]["test"] == 216
        assert report["metrics"]["oa"] > 0.25  # chance is 0.1
        low, high = report["metrics"]["oa_ci95"]
        assert low <= report["metrics"]["oa"] <= high and high - low < 0.4
        assert np.sum(report["confusion"]) == report["data"]["test"]
    assert results["random"]["encoder"]["checkpoint_step"] is None
    # The MAE baseline was trained on S2 + S1: EuroSAT has no S1, so VV and VH are zero-filled.
    assert results["random"]["encoder"]["zero_filled_bands"] == ["VV", "VH"]
    assert results["pretrained"]["encoder"]["checkpoint_step"] == 10
    assert results["pretrained"]["data"]["normalization"] == "percentile_clip"
    assert results["pretrained"]["data"]["resize_to"] == 48


def test_linear_probe_end_to_end(small_smarties_run, tmp_path, finetune_config):
    config = finetune_config("eurosat_ms_linear")
    config.encoder = str(small_smarties_run)
    config.linear.steps = 50
    report = classification.run(config, tmp_path)
    assert report["method"] == "linear"
    assert report["linear"]["weight_decay"] in report["linear"]["validation_scores"]
    assert report["metrics"]["oa"] > 0.25  # chance is 0.1


def _params(model):
    return {
        "/".join(map(str, path)): np.asarray(v)
        for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }


def test_llrd_scales_follow_depth(small_smarties_run):
    encoder = encoders.load_encoder(str(small_smarties_run))
    params = {"encoder": nnx.state(encoder.model, nnx.Param), "head": {"w": np.zeros(2)}}
    scales = optim.layer_scales(params, encoder.depth + 1, 0.5, encoder.layer_of)
    flat = jax.tree_util.tree_flatten_with_path(scales)[0]
    scales = {optim.param_path(p).removesuffix("/value"): s for p, s in flat}
    # depth 2: embeddings 0.5**3, block i 0.5**(2 - i), final norm and head 1.
    assert scales["encoder/encoder/patch_embed/kernel"] == 0.5**3
    assert scales["encoder/encoder/cls_token"] == 0.5**3
    assert scales["encoder/encoder/blocks/0/attn/qkv/kernel"] == 0.5**2
    assert scales["encoder/encoder/blocks/1/mlp/fc2/kernel"] == 0.5
    assert scales["encoder/encoder/norm/scale"] == 1.0
    assert scales["head/w"] == 1.0


@pytest.mark.parametrize("finetune", [False, True])
def test_finetune_trains_head_and_encoder_only_when_asked(
    small_smarties_run, tmp_path, finetune_config, monkeypatch, finetune
):
    config = finetune_config("eurosat_ms_finetune")
    config.encoder = str(small_smarties_run)
    config.finetune.update(steps=30, warmup_steps=3, lr=3e-3, finetune=finetune, log_every=10)
    before = _params(encoders.load_encoder(config.encoder).model)
    trained = {}
    real_fit = trainer.fit

    def spy(encoder, *args, **kwargs):
        model, head, history = real_fit(encoder, *args, **kwargs)
        trained.update(_params(model))
        return model, head, history

    monkeypatch.setattr(trainer, "fit", spy)
    report = classification.run(config, tmp_path)
    history = report["finetune"]["history"]
    assert [h["step"] for h in history] == [10, 20, 30]
    assert history[-1]["loss"] < history[0]["loss"]
    assert report["metrics"]["oa"] > 0.2  # chance is 0.1
    changed = {k for k in before if not np.array_equal(before[k], trained[k])}
    if finetune:
        assert "encoder/blocks/0/attn/qkv/kernel" in changed
        # Only what encoding reads moves: the decoder stays as pretrained.
        assert changed and all(k.startswith("encoder/") for k in changed)
    else:
        assert not changed


def test_bigearthnet_multilabel_linear_and_knn(tmp_path, finetune_config, small_smarties_run):
    for method in ("linear", "knn"):
        config = finetune_config("bigearthnet_multilabel")
        config.encoder = str(small_smarties_run)
        config.method = method
        config.linear.steps = 30
        report = classification.run(config, tmp_path / method)
        assert report["task"] == "multilabel_classification"
        assert (report["data"]["train"], report["data"]["test"]) == (16, 8)
        m = report["metrics"]
        assert set(m) >= {"map_macro", "map_micro", "f1_micro", "f1_macro"}
        assert 0 < m["map_micro"] <= 1 and 0 <= m["f1_micro"] <= 1
        assert "confusion" not in report


def test_reobench_sweep_is_deterministic_and_hurts(tmp_path, finetune_config, small_smarties_run):
    config = finetune_config("reobench_eurosat_ms")
    config.encoder = str(small_smarties_run)
    config.robustness.corruptions = ("gaussian_noise", "rotate")
    config.robustness.severities = (1, 5)
    first = classification.run(config, tmp_path / "a")["robustness"]
    second = classification.run(config, tmp_path / "b")["robustness"]
    assert first["cells"] == second["cells"]
    assert set(first["cells"]) == {"gaussian_noise", "rotate"}
    assert set(first["cells"]["rotate"]) == {"1", "5"}
    noise = first["cells"]["gaussian_noise"]
    assert noise["5"] < first["clean"]  # sigma 0.1 of the range hurts the probe
    assert first["abs_drop"] == pytest.approx(first["clean"] - first["mean_corrupted"])
    assert (tmp_path / "a" / "robustness.png").exists()
    assert "mean corrupted" in (tmp_path / "a" / "report.md").read_text()


def test_unknown_method_and_key_are_named(tmp_path, finetune_config):
    config = finetune_config("eurosat_ms_knn")
    config.method = "svm"
    with pytest.raises(ValueError, match="svm"):
        classification.run(config, tmp_path)
    config = finetune_config("eurosat_ms_knn")
    config.data.key = "s1"
    with pytest.raises(ValueError, match="'s1'"):
        classification.run(config, tmp_path)


def test_eurosat_rgb_three_bands(small_smarties_run, tmp_path, finetune_config):
    config = finetune_config("eurosat_rgb_knn")
    config.encoder = str(small_smarties_run)
    report = classification.run(config, tmp_path)
    assert report["data"]["bands"] == ["red", "green", "blue"]
    assert (report["data"]["train"], report["data"]["test"]) == (700, 300)
    assert report["metrics"]["oa"] > 0.2  # chance is 0.1


def test_finetune_main_cli(small_smarties_run, tmp_path, shared_data):
    """The documented command line: a pretraining workdir in, report files and metrics out."""
    command = [
        sys.executable,
        str(ROOT / "finetune" / "main.py"),
        f"--config={ROOT / 'configs' / 'finetune' / 'eurosat_ms_knn.py'}",
        f"--config.encoder={small_smarties_run}",
        f"--config.data.source_args.root={shared_data / 'eurosat_ms'}",
        f"--workdir={tmp_path}",
    ]
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout[done.stdout.index("{") :])
    assert (
        printed["metrics"]["oa"]
        == json.loads((tmp_path / "report.json").read_text())["metrics"]["oa"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion.png",
        "report.json",
        "report.md",
    ]
