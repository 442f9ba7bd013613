r"""Scene classification on your own images: a class-per-subfolder tree, or an index of
path,label rows.

  # root/<Class>/*.tif|jpg|png (the EuroSAT, UC Merced, AID layout)
  python finetune/main.py --config=configs/finetune/own_classification.py:method=linear \
      --config.data.source_args.root=/data/UCMerced_LandUse/Images \
      --config.encoder=WORKDIR --workdir=workdirs/eval/ucm
  # a separate test folder with the same class subfolders
  ... --config.data.train_root=/data/mine/train --config.data.test_root=/data/mine/test
  # one root with split subfolders root/{train,val,test}/<Class>/*
  ... --config.data.train_splits="('train','val')" --config.data.test_split=test
  # GeoTIFFs: name the registry sensor, and the bands' order in the files when their band
  # descriptions do not name them (here 4-band files)
  ... --config.data.source_args.sensor=sentinel2_l2a \
      --config.data.source_args.file_bands="('B02','B03','B04','B08')"
  # an index: CSV path,label[,split] (multi-label: "a;b") or JSON; paths relative to its folder
  python finetune/main.py \
      --config=configs/finetune/own_classification.py:layout=index,method=linear \
      --config.data.source_args.index=/data/mine/labels.csv --config.data.test_split=test ...

Layouts: `class_folders` and `labelled_files` in eofm/data/folders.py (README, "Evaluate on your
own data"). 8-bit JPEG/PNG images are read as sensor `rgb` (red, green, blue); encoders
pretrained on other sensors read them by wavelength (red for Sentinel-2 B04, ...). Without a
test split or root, a seeded stratified split puts `test_fraction` (1/3) of each class in test.
The report puts the encoder beside the majority class and a per-band image-statistics probe on
the same split, and flags a score below either.

Default data: the EuroSAT RGB JPEGs of ../shared/data/eurosat_rgb (10 class folders).
"""

import ml_collections

from eofm import config_args
from eofm.eval import config as eval_config

LAYOUTS = {
    "folders": (
        "class_folders",
        dict(root="../shared/data/eurosat_rgb", sensor=None, file_bands=None, classes=None),
    ),
    "index": (
        "labelled_files",
        dict(
            index="",
            root=None,
            sensor=None,
            file_bands=None,
            classes=None,
            label_separator=";",
        ),
    ),
}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, method="knn", layout="folders")
    if args.layout not in LAYOUTS:
        raise ValueError(f"layout={args.layout!r}; expected one of {sorted(LAYOUTS)}")
    source, source_args = LAYOUTS[args.layout]
    c = eval_config.classification(method=args.method)
    c.data.update(source=source, source_args=source_args, key="image")
    c.fit.finetune = args.method == "finetune"
    return c
