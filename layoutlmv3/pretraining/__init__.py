"""Pretraining: LayoutLMv3 objectives (MLM, MIM, WPA) and the image tokenizer MIM predicts codes of."""
