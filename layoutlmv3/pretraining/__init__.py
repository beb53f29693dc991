"""Pretraining: LayoutLMv3's objectives (MLM, MIM, WPA), their masks and collator, the image tokenizer whose codes
MIM predicts, and the two jobs the generic trainer runs from here: pretraining (`job`, with its run config, inputs
and model building) and training the image tokenizer (`image_tokenizer_job`)."""
