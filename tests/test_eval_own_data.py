"""The own-data configs (configs/finetune/own_*.py) end to end on folder trees of real samples."""

import json

import folder_trees
import pytest

from eofm.data import datasets
from eofm.eval import classification, dense
from eofm.train import validate


def _short_fit(config, steps: int = 6):
    config.fit.total_steps = steps
    config.fit.checkpoint.every_steps = steps
    config.fit.batch_size = 8
    config.fit.log_every = steps


def test_class_folders_with_split_subfolders(finetune_config, tmp_path):
    config = finetune_config("own_classification", "method=knn")
    config.data.source_args.root = str(folder_trees.eurosat_class_tree(tmp_path))
    config.data.source_args.sensor = "sentinel2_l1c"
    config.data.source_args.file_bands = datasets.EUROSAT_MS_FILE_BANDS
    config.data.train_splits = ("train",)
    config.data.test_split = "test"
    result = classification.run(config, tmp_path / "eval")
    data = result["data"]
    assert (data["train"], data["test"]) == (162, 54)
    assert [card["files"] for card in data["provenance"].values()] == [162, 54]
    assert set(result["baselines"]) >= {"majority", "image_stats probe"}
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Baselines" in report and "'train' split" in data["split"]


def test_image_mask_folders_train_and_score_a_water_head(finetune_config, tmp_path):
    root = folder_trees.sen1floods11_image_mask_tree(tmp_path)
    config = finetune_config("own_segmentation", "head=linear")
    config.data.source_args.update(
        root=str(root), sensor="sentinel2_l1c", nodata=-1, classes=("no_water", "water")
    )
    config.data.train_split = config.data.test_split = ""
    config.test_region = (0.75, 0.0, 0.25, 1.0)
    _short_fit(config)
    result = dense.run(config, tmp_path / "eval")
    assert result["data"]["classes"] == ["no_water", "water"]
    assert {"all no_water", "all water"} <= set(result["baselines"])
    on_disk = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert on_disk["fit"]["class_weights"]


def test_change_folders_of_pngs_with_split_subfolders(finetune_config, tmp_path):
    config = finetune_config("own_change", "fusion=diff")
    config.data.source_args.root = str(folder_trees.landsat_abl_png_tree(tmp_path))
    config.window_stride = 1.0
    _short_fit(config)
    result = dense.run(config, tmp_path / "eval")
    assert result["data"]["train"] == ["r0_c0", "r0_c1", "r1_c0"]
    assert result["data"]["test"] == ["r1_c1"]
    assert result["encoder"]["missing_bands"] == {}
    assert "all positive" in " ".join(result["baselines"]) or "all changed" in " ".join(
        result["baselines"]
    )


@pytest.mark.parametrize(
    "name, arg, key",
    [
        ("own_change", "", "root"),
        ("own_segmentation", "", "root"),
        ("own_classification", "layout=index", "index"),
    ],
)
def test_an_own_data_config_without_its_path_names_the_key(finetune_config, name, arg, key):
    config = finetune_config(name, arg)
    with pytest.raises(validate.ConfigError, match=f"data.source_args.{key} is empty"):
        validate.check_source_args(config.data.source, config.data.source_args)


def test_separate_folders_with_other_classes_are_refused(finetune_config, tmp_path):
    """Label i must mean one class in train and test: folders holding other classes stop the run
    instead of scoring class indices that mean different things."""
    import shutil

    root = folder_trees.eurosat_class_tree(tmp_path)
    shutil.rmtree(root / "test" / "Forest")
    config = finetune_config("own_classification", "method=knn")
    config.data.source_args.update(sensor="sentinel2_l1c")
    config.data.train_root, config.data.test_root = str(root / "train"), str(root / "test")
    with pytest.raises(validate.ConfigError, match="classes .* differ from the test data's"):
        classification.run(config, tmp_path / "eval")
