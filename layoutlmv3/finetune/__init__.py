"""Fine-tuning LayoutLMv3 for form understanding (FUNSD entity labelling) and inference on new pages."""
