r"""Cloud and cloud-shadow segmentation on the UKIS scenes (Landsat-5, Landsat-7, Sentinel-2; six
bands blue to SWIR 2.2 in top-of-atmosphere reflectance): UPerNet on the frozen encoder's feature
levels.

  python finetune/main.py --config=configs/finetune/cloud_shadow.py \
      --config.encoder=random:configs/pretrain/satvision.py:tiny --workdir=workdirs/eval/clouds
  python finetune/main.py --config=configs/finetune/cloud_shadow.py:scene=landsat7 ...
  python finetune/main.py \
      --config=configs/finetune/cloud_shadow.py:scene=sentinel2,test_scene=landsat5 ...

Classes: clear, cloud, cloud_shadow. Each 512 x 512 scene is cut into full-width tiles: rows 0-319
train, rows 384-511 (65,536 pixels) test, the 64 rows between them are used by neither, so no
training window touches or borders the test tile. One scene (one sensor) trains; `test_scene`
scores another sensor's test tile with the same head (default: the training scene). The
encoder's pretraining normalisation applies (SatVision-TOA: reflectance as a fraction), windows
of its native size (64 px for SatVision tiny), UPerNet (64 channels, GroupNorm) on its four
levels (a Swin's strides 4, 8, 16, 32 px and widths C, 2C, 4C, 8C pass as they are), 300 steps
of batch 8. Reports miou_macro, iou_micro, per-class IoU, oa and mf1, and the encoder's
zero-filled input bands (SatVision-TOA: 9 of its 14 MODIS slots, the emissive bands and b26).

Expected with SatVision tiny, 2 shared CPU cores, about 2 minutes per run (most of it compiling),
miou_macro (IoU clear / cloud / cloud_shadow):
  sentinel2, random init (`random:configs/pretrain/satvision.py:tiny`), seed 0, with the default
    inverse-frequency class weights (0.49 / 1.67 / 2.64): 0.796 (0.935 / 0.837 / 0.617); with
    fit.class_weights="none": 0.842 (0.959 / 0.874 / 0.693). A random SMARTIES tiny: 0.787.
  Without class weights (fit.class_weights="none"): sentinel2 random seeds 0, 1: 0.840, 0.829;
    pretrained 200 steps on the MOD09GA strip: 0.826, 0.822. landsat7 seed 0: random 0.670,
    pretrained 0.679; landsat5 seed 0: random 0.751, pretrained 0.747.
  Best baseline (the report's "Baselines"): every pixel clear, 0.263; three classes have no
  threshold baseline.
"""

import ml_collections

from eofm import config_args
from eofm.data import datasets
from eofm.eval import config as eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, scene="sentinel2", test_scene="", head="upernet")
    test_scene = args.test_scene or args.scene
    scenes = tuple(dict.fromkeys((args.scene, test_scene)))
    unknown = [s for s in scenes if s not in datasets.CLOUD_SHADOW_SCENES]
    if unknown:
        raise ValueError(
            f"config argument scene / test_scene {unknown}; expected one of"
            f" {list(datasets.CLOUD_SHADOW_SCENES)}"
        )
    c = eval_config.dense("segmentation")
    c.encoder = "random:configs/pretrain/satvision.py:tiny"
    c.data.update(
        source="cloud_shadow",
        source_args={
            "root": "../shared/data/cloud_shadow_masks_ukis",
            "scenes": scenes,
        },
        inputs=("image",),
        train_ids=(f"{args.scene}:train",),
        test_ids=(f"{test_scene}:test",),
    )
    c.head.update(kind=args.head, channels=64)
    c.fit.update(total_steps=300, batch_size=8)
    return c
