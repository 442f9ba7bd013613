"""Evaluation of pretrained encoders on downstream tasks.

encoders        load a pretraining run (or a random init); its family's encoder interface
classification  kNN, linear probe and finetuning (LLRD); single- and multi-label
dense           segmentation and Siamese change detection (task objects); windows: sliding-window
                inference and random training windows
heads, fit      UPerNet / linear / classifier heads; their training with the shared loop
knn, linear     the probes; metrics: host-side OA, mAP, mIoU (macro and micro), change F1
corruptions     REOBench-style corruptions; robustness: the clean vs corrupted summary
report, plots   report.json / report.md and the PNG figures of a run
"""
