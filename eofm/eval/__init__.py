"""Evaluation of pretrained encoders on downstream tasks.

encoders        load a pretraining run (or a random init) and adapt it to a sensor's bands
classification  kNN, linear probe and finetuning (LLRD); single- and multi-label
dense           segmentation and Siamese change detection with sliding-window inference
heads, trainer  UPerNet / linear / classifier heads and their training (frozen or finetuned)
knn, linear     the probes; metrics: host-side OA, mAP, mIoU (macro and micro), change F1
corruptions     REOBench-style corruptions; robustness: the clean vs corrupted summary
report, plots   report.json / report.md and the PNG figures of a run
"""
