"""Trained dense heads loaded from a finetune workdir alone: the Sen1Floods11 water map of the
evaluation, rebuilt from the fit checkpoints' metadata and weights, and the runs that cannot give
one."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from eofm.data.spec import SensorSpec
from eofm.eval import dense, windows
from eofm.infer import heads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def floods_run(tmp_path_factory, finetune_config):
    """(workdir, config, report, the evaluation's class map of the held-out rows) of a 16-step
    UPerNet water head on a random SMARTIES tiny, checkpointed at steps 8 and 16."""
    config = finetune_config("sen1floods11")
    config.encoder = "random:configs/pretrain/smarties.py:tiny"
    config.fit.update(total_steps=16, warmup_fraction=0.1, log_every=8, batch_size=8)
    config.fit.checkpoint.every_steps = 8
    config.head.channels = 16
    workdir = tmp_path_factory.mktemp("floods")
    maps = []
    evaluate = dense.Evaluator.evaluate

    def keep_maps(self, scenes, corruption=None):
        metrics, preds = evaluate(self, scenes, corruption)
        maps.append(preds)
        return metrics, preds

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        patch.setattr(dense.Evaluator, "evaluate", keep_maps)
        result = dense.run(config, workdir)
    (water,) = maps[0]
    return workdir, config, result, water


@pytest.fixture
def copied_run(floods_run, tmp_path):
    """A copy of the trained run's workdir, to damage."""
    workdir = tmp_path / "run"
    shutil.copytree(floods_run[0], workdir)
    return workdir


def test_the_loaded_head_predicts_the_evaluations_water_map(floods_run, monkeypatch):
    monkeypatch.chdir(ROOT)
    workdir, config, result, evaluated = floods_run
    trained = heads.load_head(workdir)
    assert trained.keys == ("s2",) and trained.class_names == ["no_water", "water"]
    assert trained.num_classes == 2 and trained.step == 16
    assert (trained.window, trained.stride) == (96, 48)
    assert trained.specs == {"s2": SensorSpec.full("sentinel2_l1c")}
    assert trained.encoder.ref == config.encoder and trained.normalization == "percentile_clip"

    # The held-out rows of the raw chip, normalised with the saved training statistics only.
    train, test, _ = dense.load_scenes(config)
    scene = test[0]
    images = {"s2": trained.normalize("s2", scene.raw["s2"], scene.valid["s2"])}
    expected = dense.Normalizers(train, trained.normalization)(scene, "s2")
    np.testing.assert_array_equal(images["s2"], expected)

    # The evaluation's map: the argmax of the windows' logits averaged, exactly.
    logits = windows.sliding_window(
        trained.logits, images, trained.window, trained.stride, trained.num_classes
    )
    water = logits.argmax(-1)
    np.testing.assert_array_equal(water, evaluated)
    score = trained.task.score([water], [scene.mask], trained.num_classes)
    report = json.loads((workdir / "report.json").read_text())
    assert score["miou_macro"] == pytest.approx(result["metrics"]["miou_macro"], abs=1e-9)
    assert score["miou_macro"] == pytest.approx(report["metrics"]["miou_macro"], abs=1e-9)

    # `predict`: each window's class probabilities, the softmax of its logits.
    batch = {"s2": images["s2"][None, :96, :96]}
    probabilities = trained.predict(batch)
    assert probabilities.shape == (1, 96, 96, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, jax.nn.softmax(trained.logits(batch)), atol=1e-6)
    np.testing.assert_array_equal(probabilities[0].argmax(-1), trained.logits(batch)[0].argmax(-1))


def test_normalize_refuses_images_of_other_bands(floods_run, monkeypatch):
    monkeypatch.chdir(ROOT)
    trained = heads.load_head(floods_run[0])
    with pytest.raises(ValueError, match=r"has 3 bands.*sentinel2_l1c bands \['B01'"):
        trained.normalize("s2", np.zeros((8, 8, 3), np.float32), np.ones((8, 8, 3), bool))
    with pytest.raises(KeyError, match=r"'s1'.*\['s2'\]"):
        trained.normalize("s1", np.zeros((8, 8, 2), np.float32), np.ones((8, 8, 2), bool))


def test_a_workdir_without_a_fit_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "fit" / "checkpoints")):
        heads.load_head(tmp_path)


def test_an_unfinished_fit_names_the_missing_step(copied_run):
    shutil.rmtree(copied_run / "fit" / "checkpoints" / "16")  # killed after step 8's checkpoint
    with pytest.raises(FileNotFoundError, match="stopped at step 8.*last step 16 is missing"):
        heads.load_head(copied_run)


def _edit_meta(workdir: Path, edit) -> None:
    """Applies `edit` to the metadata dict of every fit checkpoint of `workdir`."""
    files = sorted((workdir / "fit" / "checkpoints").glob("*/meta/metadata"))
    assert [f.parts[-3] for f in files] == ["16", "8"]
    for path in files:
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))


def test_a_run_saved_without_the_inference_metadata_is_told_to_rerun(copied_run):
    _edit_meta(copied_run, lambda meta: meta.pop("inference"))
    with pytest.raises(ValueError, match="saved without what inference needs.*rerun finetune"):
        heads.load_head(copied_run)


def test_a_classification_head_makes_no_map(copied_run):
    # What the fit of a classification run records.
    _edit_meta(copied_run, lambda meta: meta.update(inference={"task": "classification"}))
    with pytest.raises(ValueError, match="classification head; only dense heads"):
        heads.load_head(copied_run)
