"""Sources over user folder layouts (`eofm.data.folders`), on trees made from the real samples."""

import pickle
import shutil
from pathlib import Path

import folder_trees
import numpy as np
import pytest
from PIL import Image
from raster_checks import check_images

from eofm.data import datasets, folders
from eofm.data.spec import SensorSpec

EUROSAT_FILE_BANDS = list(datasets.EUROSAT_MS_FILE_BANDS)
L1C = "sentinel2_l1c"


def _labels_by_name(source) -> dict[str, object]:
    """File name -> label of a labelled source."""
    return {Path(f).name: label for f, label in zip(source.files, source.labels)}


# ---------------------------------------------------------------------------------------------
# Splits


def test_split_aliases_and_unknown_splits(shared_data):
    present = ["test", "train", "validation"]
    for name in ("val", "valid", "Validation"):
        assert datasets.matching_splits(name, present, where="x") == ["validation"]
    assert datasets.matching_splits("training", present, where="x") == ["train"]
    with pytest.raises(ValueError, match=r"x: no split 'dev'.*\['test', 'train', 'validation'\]"):
        datasets.matching_splits("dev", present, where="x")
    root = shared_data / "eurosat_ms"
    assert len(datasets.eurosat_ms(root, split="training")) == 216
    with pytest.raises(ValueError, match=r"no split 'val'; the splits present are \['train'\]"):
        datasets.eurosat_ms(root, split="val")
    with pytest.raises(ValueError, match=r"no split 'test'.*\['train'\]"):
        datasets.eurosat_rgb(root, split="test")


# ---------------------------------------------------------------------------------------------
# Class folders


def test_class_folders_eurosat_rgb_jpegs(shared_data):
    root = shared_data / "eurosat_rgb"
    source = datasets.make_source("class_folders", root=root, key="rgb")
    reference = datasets.eurosat_rgb(root)
    assert len(source) == 1000
    assert source.specs == {"rgb": SensorSpec("rgb", ("red", "green", "blue"))}
    assert source.label_names == {"label": list(datasets.EUROSAT_CLASSES)}
    assert _labels_by_name(source) == _labels_by_name(reference)
    index = reference.files.index(source.files[500])
    np.testing.assert_array_equal(source[500]["rgb"], reference[index]["rgb"])
    assert source.reads_from()["files"] == source.files
    assert "1000 examples from" in repr(source) and "SeaLake" in repr(source)


def test_class_folders_geotiff_splits(shared_data, tmp_path):
    root = folder_trees.eurosat_class_tree(tmp_path)
    train = folders.class_folders(
        root, split="train", sensor=L1C, file_bands=EUROSAT_FILE_BANDS, key="s2"
    )
    test = folders.class_folders(
        root, split="testing", sensor=L1C, file_bands=EUROSAT_FILE_BANDS, key="s2"
    )
    assert (len(train), len(test)) == (162, 54)
    assert train.label_names == test.label_names == {"label": list(datasets.EUROSAT_CLASSES)}
    # Labels are those of eurosat_ms's labels.csv for the same files.
    reference = datasets.eurosat_ms(shared_data / "eurosat_ms")
    expected = _labels_by_name(reference)
    assert {**_labels_by_name(train), **_labels_by_name(test)} == expected
    # Bands in ESA order, B8A moved from the files' last channel: equal to eurosat_ms.
    assert train.specs["s2"] == reference.specs["s2"]
    name = Path(test.files[7]).name
    same = next(i for i, f in enumerate(reference.files) if Path(f).name == name)
    np.testing.assert_array_equal(test[7]["s2"], reference[same]["s2"])
    with pytest.raises(ValueError, match=r"split subfolders \['test', 'train'\]; pass split="):
        folders.class_folders(root, sensor=L1C, file_bands=EUROSAT_FILE_BANDS)
    with pytest.raises(ValueError, match=r"no split 'val'; the splits present are \['test', 'tr"):
        folders.class_folders(root, split="val", sensor=L1C, file_bands=EUROSAT_FILE_BANDS)
    with pytest.raises(ValueError, match="has no split subfolders"):
        folders.class_folders(root / "train", split="train", sensor=L1C)


def test_class_folders_classes_and_bands(tmp_path):
    root = folder_trees.eurosat_class_tree(tmp_path) / "train"
    order = list(reversed(datasets.EUROSAT_CLASSES))
    source = folders.class_folders(
        root, sensor=L1C, file_bands=EUROSAT_FILE_BANDS, classes=order, bands=["B04", "B8A"]
    )
    assert source.label_names["label"] == order
    assert all(order[label] == Path(f).parent.name for f, label in zip(source.files, source.labels))
    reference = folders.class_folders(root, sensor=L1C, file_bands=EUROSAT_FILE_BANDS)
    sample = source[0]
    full = reference[reference.files.index(source.files[0])]["image"]
    bands = reference.specs["image"].bands
    np.testing.assert_array_equal(sample["image"][..., 1], full[..., bands.index("B8A")])
    with pytest.raises(ValueError, match=r"names \['Forest'\] found here are not in classes="):
        folders.class_folders(root, sensor=L1C, classes=[c for c in order if c != "Forest"])
    with pytest.raises(ValueError, match=r"no folder for classes \['Snow'\]"):
        folders.class_folders(root, sensor=L1C, classes=[*order, "Snow"])


def test_class_folders_errors(shared_data, tmp_path):
    root = folder_trees.eurosat_class_tree(tmp_path) / "test"
    with pytest.raises(ValueError, match="GeoTIFFs need sensor="):
        folders.class_folders(root)
    with pytest.raises(ValueError, match=r"has 13 bands.*sentinel2_l2a has 12.*file_bands="):
        folders.class_folders(root, sensor="sentinel2_l2a")
    with pytest.raises(ValueError, match="has 13 bands, but file_bands names 12"):
        folders.class_folders(root, sensor=L1C, file_bands=EUROSAT_FILE_BANDS[:12])
    jpeg = shared_data / "eurosat_rgb" / "Forest" / "Forest_1042.jpg"
    (root / "Forest" / jpeg.name).symlink_to(jpeg)
    with pytest.raises(ValueError, match=r"mixed \(e\.g\. .*\.tif and .*Forest_1042\.jpg\)"):
        folders.class_folders(root, sensor=L1C)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no examples"):
        folders.class_folders(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        folders.class_folders(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# Path, label indexes


def test_labelled_files_separate_train_and_test_roots(shared_data, tmp_path):
    train_root, test_root = folder_trees.eurosat_csv_split_roots(tmp_path)
    args = dict(sensor=L1C, file_bands=EUROSAT_FILE_BANDS, classes=datasets.EUROSAT_CLASSES)
    train = datasets.make_source("labelled_files", index=train_root / "labels.csv", **args)
    test = datasets.make_source("labelled_files", index=test_root / "labels.csv", **args)
    assert (len(train), len(test)) == (162, 54)
    expected = _labels_by_name(datasets.eurosat_ms(shared_data / "eurosat_ms"))
    assert {**_labels_by_name(train), **_labels_by_name(test)} == expected
    assert all(Path(f).parent == test_root / "images" for f in test.files)
    assert test.reads_from()["files"] == [str(test_root / "labels.csv"), *test.files]
    assert isinstance(test[0]["label"].item(), int)
    # The index may live apart from the images.
    (tmp_path / "elsewhere").mkdir()
    moved = shutil.copy(test_root / "labels.csv", tmp_path / "elsewhere" / "index.csv")
    apart = folders.labelled_files(moved, root=test_root, **args)
    assert apart.files == test.files and apart.labels == test.labels
    with pytest.raises(FileNotFoundError, match=r"54 of 54 listed files are missing"):
        folders.labelled_files(moved, **args)
    with pytest.raises(ValueError, match="has no split column"):
        folders.labelled_files(moved, root=test_root, split="test", **args)


def test_labelled_files_multilabel_csv_and_json(tmp_path):
    root = folder_trees.eurosat_index_root(tmp_path)
    args = dict(sensor=L1C, file_bands=EUROSAT_FILE_BANDS)
    from_csv = folders.labelled_files(root / "multilabel.csv", **args)
    names = sorted([*datasets.EUROSAT_CLASSES, *set(folder_trees.EUROSAT_GROUPS.values())])
    assert from_csv.label_names["label"] == names and len(from_csv) == 40
    for f, hot in zip(from_csv.files, from_csv.labels):
        cls = Path(f).name.rsplit("_", 1)[0]
        assert hot.dtype == np.float32 and hot.shape == (14,)
        assert [names[i] for i in np.flatnonzero(hot)] == sorted(
            [cls, folder_trees.EUROSAT_GROUPS[cls]]
        )
    from_json = folders.labelled_files(root / "multilabel.json", **args)
    assert from_json.files == from_csv.files
    np.testing.assert_array_equal(np.stack(from_json.labels), np.stack(from_csv.labels))
    train = folders.labelled_files(root / "multilabel.json", split="train", **args)
    test = folders.labelled_files(root / "multilabel.csv", split="test", **args)
    assert (len(train), len(test)) == (30, 10)
    assert train.label_names == test.label_names  # Classes come from every split of the index.
    assert test[0]["label"].shape == (14,)
    by_path = folders.labelled_files(root / "by_path.json", **args)
    assert by_path.label_names["label"] == list(datasets.EUROSAT_CLASSES)
    classes = [by_path.label_names["label"][label] for label in by_path.labels]
    assert classes == [Path(f).name.rsplit("_", 1)[0] for f in by_path.files]
    with pytest.raises(ValueError, match=r"names \['water'\] found here are not in classes="):
        folders.labelled_files(
            root / "multilabel.csv", classes=[n for n in names if n != "water"], **args
        )
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("path,label\nx.tif,a\ny.tif,\n")
    with pytest.raises(ValueError, match=r"1 entries have no label \(e\.g\. y\.tif\)"):
        folders.labelled_files(unlabelled, **args)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.tif,a\n")
    with pytest.raises(ValueError, match=r"needs columns path and label.*\['file', 'class'\]"):
        folders.labelled_files(bad, **args)


# ---------------------------------------------------------------------------------------------
# BigEarthNet v1-style metadata


def test_bigearthnet_v1_metadata(shared_data, tmp_path):
    root = folder_trees.bigearthnet_v1_tree(tmp_path)
    v2 = datasets.BigEarthNetSource(shared_data / "bigearthnet_v2_s1s2", keys=("s1",))
    v1 = datasets.BigEarthNetSource(root, keys=("s1",))
    v1_43 = datasets.BigEarthNetSource(root, keys=("s1",), label_set=43)
    assert len(datasets.BIGEARTHNET_43_CLASSES) == len(set(datasets.BIGEARTHNET_43_CLASSES)) == 43
    assert v1_43.label_names["label"][28] == "Transitional woodland/shrub"
    for i in (0, 5, 23):
        np.testing.assert_array_equal(v1[i]["label"], v2[i]["label"])
        hot = v1_43[i]["label"]
        assert hot.shape == (43,) and hot.dtype == np.float32
        names19 = v2.patches[i]["labels"]
        expected = {folder_trees.BIGEARTHNET_19_TO_43[n] for n in names19}
        assert {datasets.BIGEARTHNET_43_CLASSES[j] for j in np.flatnonzero(hot)} == expected
    validation = [p["patch_id"] for p in v2.patches if p["split"] == "validation"]
    for name in ("val", "validation", "VALID"):
        source = datasets.BigEarthNetSource(root, split=name, keys=("s1",))
        assert [p["patch_id"] for p in source.patches] == validation and len(source) == 8
    assert len(datasets.BigEarthNetSource(shared_data / "bigearthnet_v2_s1s2", split="val")) == 8
    with pytest.raises(ValueError, match=r"no split 'dev'; the splits present are \['test', 'tra"):
        datasets.BigEarthNetSource(root, split="dev")
    with pytest.raises(ValueError, match=r"label_set=43 needs 'labels_43'.*24 patches"):
        datasets.BigEarthNetSource(shared_data / "bigearthnet_v2_s1s2", label_set=43)
    with pytest.raises(ValueError, match="label_set is 19 or 43"):
        datasets.BigEarthNetSource(root, label_set=10)


# ---------------------------------------------------------------------------------------------
# Images and masks matched by stem


def test_image_mask_folders_sen1floods11(shared_data, tmp_path):
    root = folder_trees.sen1floods11_image_mask_tree(tmp_path)
    source = datasets.make_source("image_mask_folders", root=root, sensor=L1C, nodata=-1, key="s2")
    reference = datasets.sen1floods11(shared_data / "sen1floods11_sample")
    assert source.ids == reference.ids == ["Spain_7370579"]
    assert source.label_names == {"mask": ["0", "1"]}  # Classes 0..K-1 found in the masks.
    assert source.specs["s2"] == reference.specs["s2"]  # Band names from the descriptions.
    sample, expected = source[0], reference[0]
    check_images(sample, source.specs, (512, 512))
    np.testing.assert_array_equal(sample["mask"], expected["mask"])
    np.testing.assert_array_equal(sample["s2"], expected["s2"])
    assert (sample["mask"] == -1).any() and set(np.unique(sample["mask"])) == {-1, 0, 1}
    named = folders.image_mask_folders(
        root, sensor=L1C, nodata=-1, classes=datasets.SEN1FLOODS11_CLASSES
    )
    assert named.label_names == {"mask": list(datasets.SEN1FLOODS11_CLASSES)}
    assert pickle.loads(pickle.dumps(named))[0]["mask"].sum() == named[0]["mask"].sum()
    with pytest.raises(
        ValueError,
        match=r"masks/Spain_7370579.tif \(Spain_7370579\): mask values \[-1\] are neither",
    ):
        folders.image_mask_folders(root, sensor=L1C, classes=datasets.SEN1FLOODS11_CLASSES)
    with pytest.raises(ValueError, match=r"values \[-1, 0, 1\]; pass classes= or class_values="):
        folders.image_mask_folders(root, sensor=L1C)


def test_image_mask_folders_png_masks(shared_data, tmp_path):
    root = folder_trees.ukis_cloud_mask_tree(tmp_path)
    with Image.open(shared_data / "cloud_shadow_masks_ukis" / "landsat7_msk.png") as image:
        reference = np.asarray(image).astype(np.int32)
    args = dict(sensor="landsat7_etm_toa", file_bands=["B1", "B2", "B3", "B4", "B5", "B7"])
    five = folders.image_mask_folders(
        root, classes=["shadow", "clear1", "clear2", "clear3", "cloud"], **args
    )
    np.testing.assert_array_equal(five[0]["mask"], reference)
    assert five[0]["image"].shape == (512, 512, 6)
    two = folders.image_mask_folders(
        root, classes=["cloud", "shadow"], class_values=[4, 0], ignore_values=[1, 2, 3], **args
    )
    mask = two[0]["mask"]
    np.testing.assert_array_equal(mask == 0, reference == 4)
    np.testing.assert_array_equal(mask == 1, reference == 0)
    np.testing.assert_array_equal(mask == -1, np.isin(reference, [1, 2, 3]))
    assert two.reads_from()["files"] == [
        str(root / "images" / "landsat7.tif"),
        str(root / "masks" / "landsat7.png"),
    ]


def test_image_mask_folders_unmatched_stems(tmp_path):
    root = folder_trees.ukis_cloud_mask_tree(tmp_path)
    shutil.copy(root / "masks" / "landsat7.png", root / "masks" / "landsat7_b.png")
    shutil.copy(root / "masks" / "landsat7.png", root / "masks" / "landsat9.png")
    with pytest.raises(ValueError, match=r"masks/: 2 of 3 unmatched \(e\.g\. landsat7_b, landsat9"):
        folders.image_mask_folders(root, sensor="landsat7_etm_toa")
    with pytest.raises(FileNotFoundError, match=r"expected folders images/, labels/"):
        folders.image_mask_folders(root, masks="labels")


# ---------------------------------------------------------------------------------------------
# Change detection: A, B, label


def test_change_folders_taizhou_pngs(tmp_path):
    root = folder_trees.landsat_abl_png_tree(tmp_path)
    tiles = folder_trees.taizhou_tiles()
    train = datasets.make_source("change_folders", root=root, split="train")
    test = datasets.make_source("change_folders", root=root, split="test")
    assert train.ids == ["r0_c0", "r0_c1", "r1_c0"] and test.ids == ["r1_c1"]
    assert train.label_names == {"mask": ["unchanged", "changed"]}
    assert train.specs == {key: SensorSpec.full("rgb") for key in ("t1", "t2")}
    changed = 0
    for source in (train, test):
        for i, stem in enumerate(source.ids):
            sample = source[i]
            check_images(sample, source.specs, (200, 200))
            t1, t2, label = tiles[stem]
            np.testing.assert_array_equal(sample["t1"], t1)
            np.testing.assert_array_equal(sample["t2"], t2)
            np.testing.assert_array_equal(sample["mask"], (label == 255).astype(np.int32))
            changed += int(sample["mask"].sum())
    assert changed == 4227  # The changed reference pixels of Taizhou.
    with pytest.raises(
        ValueError, match=r"r0_c0\.png \(r0_c0\): mask values \[255\].*change_value=1"
    ):
        folders.change_folders(root, split="train", change_value=1)
    with pytest.raises(ValueError, match=r"split subfolders \['test', 'train'\]"):
        folders.change_folders(root)
    with pytest.raises(ValueError, match=r"no split 'val'; the splits present are \['test', 'tr"):
        folders.change_folders(root, split="val")
    with pytest.raises(ValueError, match="JPEG/PNG images are read as sensor 'rgb'"):
        folders.change_folders(root, split="test", sensor_after="landsat7_etm")
    (root / "test" / "B" / "r1_c1.png").unlink()
    with pytest.raises(ValueError, match=r"A/: 1 of 1 unmatched \(e\.g\. r1_c1\); label/: 1 of 1"):
        folders.change_folders(root, split="test")
