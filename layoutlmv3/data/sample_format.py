"""The one definition of a training sample inside a webdataset shard, shared by writer and reader.

data_prep writes it; layoutlmv3.data reads it. A sample is one document page; its files in the tar share the
key `{source_id}.p{page:05d}` with dots replaced by underscores (webdataset splits keys at the first dot):

- `image.png`   the page resized to IMAGE_SIZE x IMAGE_SIZE (the model's input), mode "L" or "RGB"
- `tok.png`     the page resized to TOKENIZER_IMAGE_SIZE (input of the MIM image tokenizer: 14x14 visual tokens)
- `tokens.npz`  the page's BPE tokens WITHOUT special tokens and WITHOUT truncation (the loader crops/windows):
                  input_ids int32 [N], bbox int16 [N, 4] (0..1000, each sub-token inherits its word's box),
                  word_ids int32 [N] (index into `words`)
- `meta.json`   {"words": [str], "word_boxes": [[x0,y0,x1,y1]] (0..1000), "line_ids": [int] (one per word;
                 words of one OCR line / annotated segment share an id), "line_boxes": [[x0,y0,x1,y1]] (per line id,
                 0..1000: the segment-level boxes the paper used), "page_size": [width, height] (pixels of the
                 source page), "source": str (path relative to the input root), "page": int (0-based page
                 number in a multi-page file), "tokenizer": str (tokenizer fingerprint)}

Shards are named `{prefix}-{index:06d}.tar`; a manifest `manifest.json` sits beside them (see MANIFEST_*).
"""

from __future__ import annotations

IMAGE_SIZE = 224
TOKENIZER_IMAGE_SIZE = 112
IMAGE_FILE = "image.png"
TOKENIZER_IMAGE_FILE = "tok.png"
TOKENS_FILE = "tokens.npz"
META_FILE = "meta.json"
SAMPLE_FILES = (IMAGE_FILE, TOKENIZER_IMAGE_FILE, TOKENS_FILE, META_FILE)

SHARD_PATTERN = "{prefix}-{index:06d}.tar"
MANIFEST_FILE = "manifest.json"
REJECTS_FILE = "rejects.jsonl"
# manifest.json keys: {"format_version": 1, "tokenizer": fingerprint, "image_size": IMAGE_SIZE,
#   "tokenizer_image_size": TOKENIZER_IMAGE_SIZE,
#   "shards": [{"name": str, "samples": int, "bytes": int, "sha256": hex str}],
#   "total_samples": int, "rejects": {reason: count}, "seed": int,
#   "ocr": {"source": --ocr, and for tesseract "psm", "invert", "min_dpi", "max_dpi", "tesseract_version",
#           "language_data"},
#   "file_list": {"sha256": hex str, "files": int} (only when the pages came from --file-list)}
# "ocr" and "file_list" were added without a new format_version (readers ignore keys they do not use); manifests
# written before them lack them and still load.
# A shard's name is a plain relative file name (layoutlmv3.data.shards.check_shard_name); "sha256" (of the whole
# tar file) is absent from manifests written before it was recorded, which still load unchecked.
MANIFEST_FORMAT_VERSION = 1


def sample_key(source_id: str, page: int) -> str:
    """Tar member key of a page: stable, unique, and free of dots (webdataset splits at the first dot)."""
    safe = source_id.replace(".", "_").replace("/", "__")
    return f"{safe}_p{page:05d}"
