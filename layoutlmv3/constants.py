"""Facts every layer shares and none owns, importable without torch (data preparation workers import the
tokenizer, which must stay light)."""

IGNORE_INDEX = -100  # label value the losses skip (CrossEntropyLoss' default): tokenizer labels, MLM/WPA labels
NO_WORD = -1  # word id of specials, questions and padding in tensors (the tokenizer's None)
