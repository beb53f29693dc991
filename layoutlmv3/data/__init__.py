"""Reading tokenized webdataset shards for training: splitting, decoding, collation, resumable position."""
