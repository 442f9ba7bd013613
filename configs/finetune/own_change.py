r"""Bi-temporal change detection on your own `A/`, `B/`, `label/` folders (LEVIR-CD, DSIFN,
OSCD-style): Siamese frozen encoder + UPerNet.

  python finetune/main.py --config=configs/finetune/own_change.py:fusion=diff \
      --config.data.source_args.root=/data/LEVIR-CD --config.encoder=WORKDIR \
      --workdir=workdirs/eval/levir
  # multispectral pairs, labels 1 for change
  ... --config.data.source_args.sensor=sentinel2_l1c --config.data.source_args.change_value=1

Layout `root/<split>/{A,B,label}/<stem>.<ext>` (`change_folders` in eofm/data/folders.py): train
pairs from data.train_split, test pairs from data.test_split (default train / test; also
data.train_root / data.test_root); A is the earlier date. The label marks change with
`change_value` (255 in LEVIR-CD and DSIFN; set 1 for 0/1 labels: a label holding other values
is an error naming the file). RGB PNG/JPEG pairs are read as `rgb`; `sensor_before` /
`sensor_after` name each date's sensor for multispectral pairs.

Loss weighted by inverse class frequency over the training pixels (`fit.class_weights`): change
is rare. The report puts the encoder beside predicting "changed" everywhere, "unchanged"
everywhere and the best threshold of the change magnitude (chosen on the training pixels), and
gives the test scores at the F1-optimal threshold found on the training pairs; report.md flags
an F1 below a baseline.
"""

import ml_collections

from eofm import config_args
from eofm.eval import config as eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = config_args.parse(arg, fusion="diff")
    c = eval_config.dense("change_detection")
    c.data.update(
        source="change_folders",
        source_args=dict(
            root="",
            change_value=255,
            ignore_value=None,
            sensor="rgb",
            sensor_before=None,
            sensor_after=None,
            file_bands=None,
        ),
        inputs=("t1", "t2"),
        train_split="train",
        test_split="test",
    )
    c.head.fusion = args.fusion
    return c
