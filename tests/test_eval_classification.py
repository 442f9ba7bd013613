"""Classification on the real samples: kNN, linear probe, finetuning (LLRD), multi-label, REOBench,
baselines in every report, separate train and test folders."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from run_checks import listing, must_not_run

from eofm.eval import classification, encoders, provenance
from eofm.eval import fit as fit_lib
from eofm.train import validate

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
        config = finetune_config("eurosat_ms", "method=knn")
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
        _check_baselines_and_provenance(report, tmp_path / name)
    assert results["random"]["encoder"]["checkpoint_step"] is None
    # The MAE baseline was trained on S2 + S1: EuroSAT has no S1, so VV and VH are zero-filled.
    assert results["random"]["encoder"]["missing_bands"] == {"s2": ["VV", "VH"]}
    assert results["pretrained"]["encoder"]["checkpoint_step"] == 10
    assert results["pretrained"]["data"]["normalization"] == "percentile_clip"
    assert results["pretrained"]["data"]["resize_to"] == 48


def _check_baselines_and_provenance(report, workdir):
    """Baselines scored on the same 73 test images, flagged when above the encoder; the split in
    words and the 216 files read."""
    found = report["baselines"]
    assert set(found) == {"majority", "image_stats probe"}
    assert found["majority"]["metrics"]["oa"] == pytest.approx(8 / 73)  # 8 of the largest class
    assert found["image_stats probe"]["metrics"]["oa"] > 0.6
    for baseline in found.values():
        assert set(baseline["metrics"]) >= {"oa", "balanced_accuracy", "oa_ci95"}
    above = {n for n, b in found.items() if b["metrics"]["oa"] > report["metrics"]["oa"]}
    assert {b["baseline"] for b in report["below_baselines"]} == above
    markdown = (workdir / "report.md").read_text()
    assert "## Baselines" in markdown and ("**Below baseline**" in markdown) == bool(above)
    data = report["data"]
    assert data["split"] == (
        "seeded stratified split of one source, 1/3 of each class in test (73 of 216 images)"
    )
    card = data["provenance"]["train+test"]
    assert card["files"] == 216 and card["root"].endswith("eurosat_ms/train")
    assert data["roots"]["train+test"].endswith("eurosat_ms")


def _eurosat_folder(folder, rows, shared_data):
    """A folder of links to EuroSAT-MS files with its own labels.csv (the eurosat_ms format)."""
    folder.mkdir()
    lines = ["path,class_name,class_index,split"]
    for row in rows:
        name = Path(row["path"]).name
        (folder / name).symlink_to(shared_data / "eurosat_ms" / row["path"])
        lines.append(f"{name},{row['class_name']},{row['class_index']},{folder.name}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")


def test_separate_train_and_test_roots(tmp_path, finetune_config, shared_data, small_smarties_run):
    with open(shared_data / "eurosat_ms" / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    _eurosat_folder(tmp_path / "ours", rows[1::3], shared_data)
    _eurosat_folder(tmp_path / "theirs", rows[::3] + rows[2::3], shared_data)
    config = finetune_config("eurosat_ms", "method=knn")
    config.encoder = str(small_smarties_run)
    config.data.update(train_root=str(tmp_path / "theirs"), test_root=str(tmp_path / "ours"))
    report = classification.run(config, tmp_path / "eval")
    data = report["data"]
    assert (data["train"], data["test"]) == (144, 72)
    cards = data["provenance"]
    assert (cards["train"]["files"], cards["test"]["files"]) == (144, 72)
    assert cards["train"]["root"] == str(tmp_path / "theirs")
    assert data["roots"] == {"train": str(tmp_path / "theirs"), "test": str(tmp_path / "ours")}
    assert data["split"] == (
        f"train: all 144 examples under {tmp_path / 'theirs'};"
        f" test: all 72 examples under {tmp_path / 'ours'}"
    )
    assert set(report["baselines"]) == {"majority", "image_stats probe"}
    # With a test split, the test root's rows of that split are the test examples.
    config.data.update(test_split="ours", train_splits=("theirs",))
    splits = classification.load_splits(config)
    assert (len(splits.train.labels), len(splits.test.labels)) == (144, 72)
    assert splits.description.startswith("train: the 'theirs' split (144 examples) under")


def test_a_split_without_examples_is_named(tmp_path, finetune_config, monkeypatch):
    monkeypatch.setattr(encoders, "load_encoder", must_not_run)
    config = finetune_config("eurosat_ms", "method=knn")
    config.data.update(train_splits=("train",), test_split="test")
    with pytest.raises(validate.ConfigError, match="data.test_split = 'test'"):
        classification.run(config, tmp_path / "eval")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "labels.csv").write_text("path,class_name,class_index,split\n")
    config.data.update(train_splits=(), test_split="", test_root=str(empty))
    with pytest.raises(validate.ConfigError, match=f"data.test_root = '{empty}'"):
        classification.run(config, tmp_path / "eval")


def test_bigearthnet_root_is_a_config_key(finetune_config, shared_data):
    config = finetune_config("bigearthnet_multilabel")
    assert config.data.source_args.label_set == 19
    config.data.source_args.root = str(shared_data / "bigearthnet_v2_s1s2")  # the folder layout
    splits = classification.load_splits(config)
    assert (len(splits.train.labels), len(splits.test.labels)) == (16, 8)
    # metadata.json and each patch's three Sentinel-2 arrays.
    files = {role: card["files"] for role, card in provenance.describe(splits.sources).items()}
    assert files == {"train": 1 + 16 * 3, "test": 1 + 8 * 3}
    assert splits.description == (
        "train: the source's 'train' and 'validation' splits (16 examples);"
        " test: its 'test' split (8 examples)"
    )


def test_linear_probe_end_to_end(small_smarties_run, tmp_path, finetune_config):
    config = finetune_config("eurosat_ms", "method=linear")
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
    scale = fit_lib.layer_decay(encoder, 0.5)
    # depth 2: embeddings 0.5**3, block i 0.5**(2 - i), final norm and head 1.
    assert scale("encoder/encoder/patch_embed/kernel") == 0.5**3
    assert scale("encoder/encoder/cls_token") == 0.5**3
    assert scale("encoder/encoder/blocks/0/attn/qkv/kernel") == 0.5**2
    assert scale("encoder/encoder/blocks/1/mlp/fc2/kernel") == 0.5
    assert scale("encoder/encoder/norm/scale") == 1.0
    assert scale("head/w") == 1.0
    trained = fit_lib.trainable(encoder, finetune=True)
    assert trained("head/w") and trained("encoder/encoder/blocks/0/attn/qkv/kernel")
    assert not trained("encoder/decoder/blocks/0/attn/qkv/kernel")
    assert not fit_lib.trainable(encoder, finetune=False)("encoder/encoder/norm/scale")


@pytest.mark.parametrize("finetune", [False, True])
def test_finetune_trains_head_and_encoder_only_when_asked(
    small_smarties_run, tmp_path, finetune_config, monkeypatch, finetune
):
    config = finetune_config("eurosat_ms", "method=finetune")
    config.encoder = str(small_smarties_run)
    config.fit.update(total_steps=30, warmup_fraction=0.1, lr=3e-3, finetune=finetune, log_every=10)
    before = _params(encoders.load_encoder(config.encoder).model)
    trained = {}
    real_fit = fit_lib.fit

    def spy(*args, **kwargs):
        model, head, history = real_fit(*args, **kwargs)
        trained.update(_params(model))
        return model, head, history

    monkeypatch.setattr(fit_lib, "fit", spy)
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
        config = finetune_config("bigearthnet_multilabel", f"method={method}")
        config.encoder = str(small_smarties_run)
        config.linear.steps = 30
        report = classification.run(config, tmp_path / method)
        assert report["task"] == "multilabel_classification"
        assert (report["data"]["train"], report["data"]["test"]) == (16, 8)
        m = report["metrics"]
        assert set(m) >= {"map_macro", "map_micro", "f1_micro", "f1_macro"}
        assert 0 < m["map_micro"] <= 1 and 0 <= m["f1_micro"] <= 1
        assert "confusion" not in report


def test_reobench_sweep_is_deterministic_and_hurts(tmp_path, finetune_config, small_smarties_run):
    config = finetune_config("eurosat_ms", "method=knn,robustness=all")
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
    config = finetune_config("eurosat_ms", "method=knn")
    config.method = "svm"
    with pytest.raises(ValueError, match="svm"):
        classification.run(config, tmp_path)
    config = finetune_config("eurosat_ms", "method=knn")
    config.data.key = "s1"
    with pytest.raises(ValueError, match="'s1'"):
        classification.run(config, tmp_path)


def test_eurosat_rgb_three_bands(small_smarties_run, tmp_path, finetune_config):
    config = finetune_config("eurosat_rgb")
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
        f"--config={ROOT / 'configs' / 'finetune' / 'eurosat_ms.py'}:method=knn",
        f"--config.encoder={small_smarties_run}",
        f"--config.data.source_args.root={shared_data / 'eurosat_ms'}",
        f"--workdir={tmp_path}",
    ]
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=300, env=env
    )
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


def _finetune_command(workdir, shared_data, encoder):
    return [
        sys.executable,
        str(ROOT / "finetune" / "main.py"),
        f"--config={ROOT / 'configs' / 'finetune' / 'eurosat_ms.py'}:method=finetune",
        f"--config.encoder={encoder}",
        f"--config.data.source_args.root={shared_data / 'eurosat_ms'}",
        "--config.fit.total_steps=8",
        "--config.fit.log_every=1",
        "--config.fit.checkpoint.every_steps=2",
        f"--workdir={workdir}",
    ]


def _fit_losses(workdir):
    lines = (Path(workdir) / "fit" / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def test_finetuning_resumes_exactly_after_sigkill_and_reevaluates(
    tmp_path, shared_data, small_smarties_run
):
    """Finetuning runs in the shared loop: killed with SIGKILL it resumes with the same per-step
    losses as an uninterrupted run, and a finished workdir is re-evaluated without retraining."""
    import signal
    import time

    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}

    def finetune(workdir):
        command = _finetune_command(workdir, shared_data, small_smarties_run)
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, env=env, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    finetune(reference)
    expected = _fit_losses(reference)
    assert sorted(expected) == list(range(1, 9))

    command = _finetune_command(killed, shared_data, small_smarties_run)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "fit" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(_fit_losses(killed)) < 8
    assert "resumed from" in finetune(killed).stderr
    assert _fit_losses(killed) == expected  # bit-identical per-step losses

    first = json.loads((reference / "report.json").read_text())
    again = finetune(reference)
    assert "resumed from" in again.stderr and "at step 8" in again.stderr
    assert _fit_losses(reference) == expected  # nothing retrained
    assert json.loads((reference / "report.json").read_text())["metrics"] == first["metrics"]


@pytest.mark.parametrize("method", classification.METHODS)
def test_an_encoder_reading_none_of_the_bands_stops_every_method(
    method, tmp_path, finetune_config, monkeypatch
):
    """CROMA (pretrained on S2 + S1, its optical encoder needs Sentinel-2 bands) cannot read
    EuroSAT RGB: an error naming the encoder and both band sets, not a chance-level report."""
    monkeypatch.chdir(ROOT)
    config = finetune_config("eurosat_rgb", f"method={method}")
    config.encoder = "random:configs/pretrain/croma.py:tiny"
    config.robustness.corruptions = ("all",)
    monkeypatch.setattr(classification, "Preprocess", must_not_run)
    with pytest.raises(ValueError) as raised:
        classification.run(config, tmp_path)
    message = str(raised.value)
    assert config.encoder in message and "VV" in message and "'red', 'green', 'blue'" in message
    assert not (tmp_path / "report.json").exists()


def test_report_lists_zero_filled_bands_and_the_feature_definition(
    tmp_path, finetune_config, monkeypatch
):
    from eofm.models import mae

    monkeypatch.chdir(ROOT)
    definition = "pooled: mean of the final tokens (a test definition)"
    monkeypatch.setattr(mae.Model, "feature_definition", definition, raising=False)
    config = finetune_config("eurosat_ms", "method=knn")
    config.encoder = "random:configs/pretrain/mae.py:tiny"
    config.knn.k = 5
    classification.run(config, tmp_path)
    card = json.loads((tmp_path / "report.json").read_text())["encoder"]
    assert card["missing_bands"] == {"s2": ["VV", "VH"]}  # EuroSAT has no S1
    assert card["feature_definition"] == definition
    markdown = (tmp_path / "report.md").read_text()
    assert "Zero-filled bands" in markdown and "s2: VV, VH" in markdown
    assert definition in markdown


@pytest.mark.parametrize(
    "make_blocked", [lambda f: f, lambda f: f / "eval"], ids=["a_file", "under_a_file"]
)
def test_an_unwritable_workdir_stops_the_run_before_any_loading(
    make_blocked, tmp_path, finetune_config, monkeypatch
):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    workdir = make_blocked(blocker)
    monkeypatch.setattr(classification, "load_splits", must_not_run)
    monkeypatch.setattr(encoders, "load_encoder", must_not_run)
    with pytest.raises(validate.ConfigError, match=re.escape(str(workdir))):
        classification.run(finetune_config("eurosat_ms", "method=knn"), workdir)


def test_a_workdir_inside_the_encoder_run_is_refused(tmp_path, finetune_config, monkeypatch):
    run = tmp_path / "run"
    config = finetune_config("eurosat_ms", "method=knn")
    config.encoder = str(run)
    monkeypatch.setattr(classification, "load_splits", must_not_run)
    for workdir in (run, run / "eval"):
        with pytest.raises(ValueError, match="encoder's run") as raised:
            classification.run(config, workdir)
        assert str(run) in str(raised.value)
    assert not run.exists()


def _permissions(root):
    return {p: p.stat().st_mode for p in (root, *root.rglob("*"))}


@pytest.fixture
def read_only_run(small_smarties_run, tmp_path):
    """A copy of the small run, with an unreadable newest checkpoint (step 20, its arrays gone),
    whose stored config names `tmp_path/elsewhere` (holding a sentinel file) as its prepared data;
    both made read-only (chmod -R a-w) for the test."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    shutil.copytree(small_smarties_run, run, ignore=shutil.ignore_patterns("data"))
    shutil.copytree(run / "checkpoints" / "10", run / "checkpoints" / "20")
    shutil.rmtree(run / "checkpoints" / "20" / "state" / "d")
    elsewhere.mkdir()
    (elsewhere / "sentinel.txt").write_text("prepared shards of another run")
    for path in run.glob("checkpoints/*/meta/metadata"):
        meta = json.loads(path.read_text())
        meta["config"]["data"]["prepared_dir"] = str(elsewhere)
        path.write_text(json.dumps(meta))
    modes = {**_permissions(run), **_permissions(elsewhere)}
    for path, mode in modes.items():
        path.chmod(mode & ~0o222)
    yield run, elsewhere
    for path, mode in modes.items():
        path.chmod(mode)


def test_evaluation_leaves_the_encoder_run_and_its_stored_paths_untouched(
    read_only_run, tmp_path, finetune_config
):
    run, elsewhere = read_only_run
    before = (listing(run), listing(elsewhere))
    config = finetune_config("eurosat_ms", "method=knn")
    config.encoder = str(run)
    report = classification.run(config, tmp_path / "eval")
    assert report["encoder"]["checkpoint_step"] == 10 and report["metrics"]["oa"] > 0.25
    assert (listing(run), listing(elsewhere)) == before
    assert (elsewhere / "sentinel.txt").read_text() == "prepared shards of another run"
