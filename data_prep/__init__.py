"""Data preparation: corpora, tokenization and dataset builders for LayoutLMv3 pretraining and fine-tuning."""
