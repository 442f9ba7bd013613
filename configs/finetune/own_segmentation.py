r"""Semantic segmentation on your own image and mask folders, matched by file stem.

  python finetune/main.py --config=configs/finetune/own_segmentation.py:head=upernet \
      --config.data.source_args.root=/data/floods \
      --config.data.source_args.sensor=sentinel2_l1c --config.data.source_args.nodata=-1 \
      --config.data.source_args.classes="('no_water','water')" \
      --config.encoder=WORKDIR --workdir=workdirs/eval/floods

Layout `root/<split>/images/<stem>.tif|png|jpg` + `root/<split>/masks/<stem>.tif|png`
(`image_mask_folders` in eofm/data/folders.py): train scenes from data.train_split, test scenes
from data.test_split (default train / test; also data.train_root / data.test_root). A flat
`root/{images,masks}` folder: set both splits to "" and hold out a region with
`--config.test_region="(0.75,0,0.25,1)"`. Mask values: class i is value i, or
`class_values[i]`; `nodata` and `ignore_values` are neither trained on nor scored. GeoTIFF images
need a registry `sensor` (bands from `file_bands` or the files' band descriptions); 8-bit
JPEG/PNG are read as `rgb`.

Loss weighted by inverse class frequency over the training pixels (`fit.class_weights`). The
report puts the encoder beside each class predicted everywhere and, for two classes, the best
threshold of one band or spectral index chosen on the training pixels, and gives the test scores
at the F1-optimal threshold found on the training scenes.
"""

import ml_collections

from eofm import config_args
from eofm.eval import config as eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, head="upernet")
    c = eval_config.dense("segmentation")
    c.data.update(
        source="image_mask_folders",
        source_args=dict(
            root="",
            images="images",
            masks="masks",
            sensor=None,
            file_bands=None,
            classes=None,
            nodata=None,
            ignore_values=(),
            class_values=None,
        ),
        inputs=("image",),
        train_split="train",
        test_split="test",
    )
    c.head.kind = args.head
    return c
