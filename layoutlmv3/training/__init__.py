"""The generic trainer every job shares: runner and train loop, DeepSpeed engine set-up, schedule, metrics,
checkpoints, signals, heartbeat, distributed/Slurm set-up and the config sections all jobs read. It knows no job:
pretraining (`layoutlmv3.pretraining.job`), the image tokenizer (`layoutlmv3.pretraining.image_tokenizer_job`) and
fine-tuning (`layoutlmv3.finetune`) import it, never the reverse."""
