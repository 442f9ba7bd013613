"""Training engine shared by pretraining and finetuning: state, step, checkpoints, metrics, loop."""
