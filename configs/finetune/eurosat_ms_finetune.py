r"""Full finetuning of an encoder on EuroSAT-MS with layer-wise lr decay.

  python finetune/main.py --config=configs/finetune/eurosat_ms_finetune.py \
      --config.encoder=WORKDIR_OF_A_PRETRAINING_RUN --workdir=workdirs/eval/eurosat_ft

A LayerNorm + linear head on the pooled features; the encoder's blocks train too, block i's lr
scaled by llrd ** (depth + 1 - i) (llrd 0.75), AdamW lr 1e-3 (head) with 10 % warmup and cosine
decay, batch 16, random 90-degree rotations and flips. `--config.finetune.finetune=False` trains
the head alone on the frozen encoder. Same split, normalisation and resizing as the probes.
"""

import ml_collections

from eofm.eval import config as eval_config


def get_config() -> ml_collections.ConfigDict:
    c = eval_config.classification(method="finetune")
    c.data.update(source="eurosat_ms", source_args={"root": "../shared/data/eurosat_ms"}, key="s2")
    c.finetune.finetune = True
    return c
