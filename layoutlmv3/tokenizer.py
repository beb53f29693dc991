"""LayoutLMv3 tokenizer: OCR words + word boxes (+ word labels) -> model inputs.

The Rust pipeline is configured exactly as transformers' ``LayoutLMv3Tokenizer`` (5.x) configures it -- a
byte-level BPE model, a ``ByteLevel(add_prefix_space=True)`` pre-tokenizer fed pre-tokenized words (so every word
is encoded as if preceded by a space), and the RoBERTa special tokens registered as added tokens -- so the same
words give the same ids. Consequences that are transformers' behaviour too, and kept on purpose:

* a word that is the empty string produces no token at all (its box and label vanish with it);
* a word that is only whitespace still produces tokens (``" "`` -> ``Ġ``, ``"\\t"`` -> ``Ġ ĉ``);
* a word containing a special-token string (``"<mask>"``, ``"a<s>b"``) yields that special token's id inside the
  word; it keeps the word's box and word id like any other sub-token.

Boxes are validated strictly (4 integers in 0..1000 with x0 <= x1 and y0 <= y1), whereas transformers accepts
anything: normalise pixel boxes with ``1000 * x / width`` and clip them before calling.

Windows (:meth:`LayoutLMv3Tokenizer.encode_windows`) cut the page's content tokens like the Rust truncation with
``stride`` does (transformers' ``return_overflowing_tokens=True``), so ids, boxes and word ids match it window for
window. One deliberate difference: transformers labels the first token *of each window* that belongs to a word,
so a window that starts in the middle of a word labels a continuation sub-token; here only a word's true first
sub-token ever carries its label, so each labelled position is the same token in every window that holds it.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from layoutlmv3.atomic_files import write_text
from layoutlmv3.constants import IGNORE_INDEX
from layoutlmv3.json_files import read_json_file

# RoBERTa's special tokens. In the RoBERTa/LayoutLMv3 vocabulary their ids are 0, 1, 2, 3 and 50264 (<mask>, the
# last id); in a vocabulary made by `train_bpe` they are 0..4 in this order, so <mask> is TRAINED_MASK_ID.
CLS_TOKEN, PAD_TOKEN, SEP_TOKEN, UNK_TOKEN, MASK_TOKEN = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
SPECIAL_TOKENS = (CLS_TOKEN, PAD_TOKEN, SEP_TOKEN, UNK_TOKEN, MASK_TOKEN)
TRAINED_MASK_ID = 4
# <s>, <pad>, </s> have these ids in every vocabulary this package accepts (checked on load): the collator pads
# with them and the model config names them (pad/bos/eos_token_id), checked against the tokenizer at start-up.
CLS_ID, PAD_ID, SEP_ID = 0, 1, 2
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # the specials plus one symbol per byte

MAX_COORD = 1000
SPECIAL_BOX = (0, 0, 0, 0)
IGNORE_LABEL = IGNORE_INDEX  # labels the loss skips (the model's one definition)
DEFAULT_MODEL_MAX_LENGTH = 512
PADDINGS = (False, True, "do_not_pad", "longest", "max_length")  # transformers' values `__call__` takes
TRUNCATIONS = (None, False, True, "do_not_truncate", "longest_first", "only_first", "only_second")

VOCAB_FILE, MERGES_FILE, CONFIG_FILE = "vocab.json", "merges.txt", "tokenizer_config.json"
MERGES_HEADER = "#version: 0.2"


@dataclass
class Encoding:
    """Model inputs for one window of a page; all lists have one entry per token."""

    input_ids: list[int]
    bbox: list[list[int]]  # [x0, y0, x1, y1] per token; specials and padding get [0, 0, 0, 0]
    attention_mask: list[int]
    word_ids: list[int | None]  # index of the source word in the page; None for specials and padding
    labels: list[int] | None  # word label on a word's first sub-token, -100 elsewhere; None without labels


class LayoutLMv3Tokenizer:
    """Byte-level BPE tokenizer producing what transformers' LayoutLMv3Tokenizer produces for words + boxes."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    ) -> None:
        _check_vocab(vocab)
        self._vocab = dict(vocab)
        self._merges = [(a, b) for a, b in merges]
        self.model_max_length = model_max_length
        self._backend = _build_backend(self._vocab, self._merges)
        self._fingerprint = _fingerprint(self._vocab, self._merges)

    # ------------------------------------------------------------------ files

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LayoutLMv3Tokenizer:
        """Load vocab.json + merges.txt (RoBERTa format), e.g. our own save or a transformers tokenizer dir."""
        directory = Path(directory)
        missing = [name for name in (VOCAB_FILE, MERGES_FILE) if not (directory / name).is_file()]
        if missing:
            where = "does not exist" if not directory.is_dir() else f"lacks {' and '.join(missing)}"
            raise FileNotFoundError(f"tokenizer directory {directory} {where} (a RoBERTa-format vocabulary is needed)")
        vocab, merges = models.BPE.read_file(str(directory / VOCAB_FILE), str(directory / MERGES_FILE))
        config_path = directory / CONFIG_FILE
        config = read_json_file(config_path) if config_path.exists() else {}
        config = config if isinstance(config, dict) else {}
        max_length = config.get("model_max_length")
        return cls(vocab, merges, max_length if isinstance(max_length, int) else DEFAULT_MODEL_MAX_LENGTH)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write vocab.json, merges.txt and a tokenizer_config.json that transformers can load as well (each whole or
        not at all: `layoutlmv3.atomic_files`)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        by_id = dict(sorted(self._vocab.items(), key=lambda item: item[1]))
        write_text(directory / VOCAB_FILE, json.dumps(by_id, ensure_ascii=False))
        merges = "".join(f"{a} {b}\n" for a, b in self._merges)
        write_text(directory / MERGES_FILE, f"{MERGES_HEADER}\n{merges}")
        config = {
            "tokenizer_class": "LayoutLMv3Tokenizer",
            "model_max_length": self.model_max_length,
            "add_prefix_space": True,
            "bos_token": CLS_TOKEN,
            "cls_token": CLS_TOKEN,
            "eos_token": SEP_TOKEN,
            "sep_token": SEP_TOKEN,
            "pad_token": PAD_TOKEN,
            "unk_token": UNK_TOKEN,
            "mask_token": MASK_TOKEN,
        }
        write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")

    # ------------------------------------------------------------------ vocabulary facts

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def pad_token_id(self) -> int:
        return self._vocab[PAD_TOKEN]

    @property
    def cls_token_id(self) -> int:
        return self._vocab[CLS_TOKEN]

    @property
    def sep_token_id(self) -> int:
        return self._vocab[SEP_TOKEN]

    @property
    def unk_token_id(self) -> int:
        return self._vocab[UNK_TOKEN]

    @property
    def mask_token_id(self) -> int:
        return self._vocab[MASK_TOKEN]

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids that MLM masking must never pick or corrupt into."""
        return frozenset(self._vocab[token] for token in SPECIAL_TOKENS)

    @property
    def fingerprint(self) -> str:
        """First 16 hex chars of a sha256 over vocab + merges, to record which vocabulary made shards/checkpoints."""
        return self._fingerprint

    # ------------------------------------------------------------------ encoding

    def encode(
        self,
        words: Sequence[str],
        boxes: Sequence[Sequence[int]],
        labels: Sequence[int] | None = None,
        *,
        max_length: int | None = 512,
        pad_to: int | None = None,
    ) -> Encoding:
        """Encode one page as ``<s> content </s>``, keeping the first ``max_length`` tokens (None: keep all).

        ``pad_to`` pads on the right to that many tokens (it must not be shorter than the encoding).
        """
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2 (room for <s> and </s>), got {max_length}")
        page = self._encode_page(words, boxes, labels)
        stop = len(page.ids) if max_length is None else max_length - 2
        return self._window(page, 0, stop, pad_to)

    def encode_windows(
        self,
        words: Sequence[str],
        boxes: Sequence[Sequence[int]],
        labels: Sequence[int] | None = None,
        *,
        max_length: int = 512,
        stride: int = 128,
        pad_to: int | None = None,
    ) -> list[Encoding]:
        """Split a page into ``<s> content </s>`` windows of at most ``max_length`` tokens covering every token.

        Consecutive windows share ``stride`` content tokens; a page that fits gives a single window. Word ids stay
        page word indices, so per-token predictions of all windows can be merged back onto the page's words.
        """
        content = max_length - 2
        if not 0 <= stride < content:
            raise ValueError(f"need 0 <= stride < max_length - 2, got stride={stride}, max_length={max_length}")
        page = self._encode_page(words, boxes, labels)
        starts = range(0, max(len(page.ids) - stride, 1), content - stride)
        return [self._window(page, start, start + content, pad_to) for start in starts]

    def __call__(
        self,
        text: Sequence[str] | Sequence[Sequence[str]],
        boxes: Sequence[Sequence[int]] | Sequence[Sequence[Sequence[int]]],
        word_labels: Sequence[int] | Sequence[Sequence[int]] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        return_overflowing_tokens: bool = False,
        return_tensors: str | None = None,
    ) -> BatchEncoding:
        """transformers' call, for its users: `tok(words, boxes=..., word_labels=..., truncation=True,
        padding="max_length", return_tensors="pt")` on one page of words or a batch of pages, giving what
        `LayoutLMv3TokenizerFast` gives on the same vocabulary (a test holds it on FUNSD pages), overflow windows
        included: there, as in transformers, a window opening inside a word labels that continuation sub-token.

        padding: False, True/"longest" or "max_length"; truncation (default: when `max_length` is given without
        padding) keeps the first `max_length` tokens, or with `return_overflowing_tokens` cuts the page into windows
        sharing `stride` tokens (`overflow_to_sample_mapping` says whose); return_tensors: None (lists) or "pt"."""
        if padding not in PADDINGS or truncation not in TRUNCATIONS:  # a typo is named, not read as no padding
            raise ValueError(f"padding must be one of {PADDINGS} and truncation one of {TRUNCATIONS}, got padding="
                             f"{padding!r}, truncation={truncation!r}")  # fmt: skip
        batched = bool(text) and not isinstance(text[0], str)
        if batched and (len(boxes) != len(text) or (word_labels is not None and len(word_labels) != len(text))):
            raise ValueError(f"a batch of {len(text)} pages needs as many boxes and word_labels lists, got "
                             f"{len(boxes)} and {'none' if word_labels is None else len(word_labels)}")  # fmt: skip
        pages = list(zip(text, boxes, word_labels or [None] * len(text))) if batched else [(text, boxes, word_labels)]
        if truncation is None:  # as transformers: max_length alone truncates, unless padding is asked for too
            truncate = max_length is not None and padding is False
        else:
            truncate = truncation not in (False, "do_not_truncate")
        longest = self.model_max_length if max_length is None else max_length
        length = longest if truncate or padding == "max_length" else None
        rows, owners = [], []
        for index, (words, page_boxes, labels) in enumerate(pages):
            if truncate and return_overflowing_tokens:
                windows = self.encode_windows(words, page_boxes, labels, max_length=length, stride=stride)
                for window in windows[1:]:
                    if labels is not None and window.word_ids[1] is not None:
                        window.labels[1] = labels[window.word_ids[1]]
            else:
                windows = [self.encode(words, page_boxes, labels, max_length=length if truncate else None)]
            rows += windows
            owners += [index] * len(windows)
        pad_to = {"max_length": length, "longest": max(len(row.input_ids) for row in rows)}.get(
            "longest" if padding is True else padding
        )
        rows = [row if pad_to is None else self._pad(row, max(pad_to, len(row.input_ids))) for row in rows]
        return BatchEncoding.of(rows, owners if return_overflowing_tokens else None, batched, return_tensors)

    def tokenize_words(
        self, words: Sequence[str], boxes: Sequence[Sequence[int]]
    ) -> tuple[list[int], list[list[int]], list[int]]:
        """A whole page's content tokens: ``(input_ids, bbox, word_ids)`` without specials, truncation or padding.

        What data preparation stores in shards, so the training loader can crop or window any page itself; each
        sub-token carries its word's box and index, exactly the content of :meth:`encode` between ``<s>``/``</s>``.
        """
        page = self._encode_page(words, boxes, None)
        return list(page.ids), [list(page.boxes[word]) for word in page.word_ids], list(page.word_ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; like transformers, words keep their leading space (``" hello world"``)."""
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _encode_page(self, words: Sequence[str], boxes: Sequence[Sequence[int]], labels: Sequence[int] | None) -> _Page:
        """Validate the page and tokenize all its words in a single call to the Rust tokenizer."""
        clean_boxes, clean_labels = _validate(words, boxes, labels)
        encoded = self._backend.encode(list(words), is_pretokenized=True, add_special_tokens=False)
        word_ids = encoded.word_ids
        token_labels = None if clean_labels is None else _first_sub_token_labels(word_ids, clean_labels)
        return _Page(encoded.ids, word_ids, clean_boxes, token_labels)

    def _window(self, page: _Page, start: int, stop: int, pad_to: int | None) -> Encoding:
        """``<s> page.ids[start:stop] </s>`` with boxes, word ids and first-sub-token labels, optionally padded."""
        ids = page.ids[start:stop]
        word_ids = page.word_ids[start:stop]
        encoding = Encoding(
            input_ids=[self.cls_token_id, *ids, self.sep_token_id],
            bbox=[list(SPECIAL_BOX), *(list(page.boxes[w]) for w in word_ids), list(SPECIAL_BOX)],
            attention_mask=[1] * (len(ids) + 2),
            word_ids=[None, *word_ids, None],
            labels=None if page.labels is None else [IGNORE_LABEL, *page.labels[start:stop], IGNORE_LABEL],
        )
        return encoding if pad_to is None else self._pad(encoding, pad_to)

    def _pad(self, encoding: Encoding, length: int) -> Encoding:
        """Right-pad to ``length`` with <pad>, box [0,0,0,0], mask 0, word id None, label -100."""
        extra = length - len(encoding.input_ids)
        if extra < 0:
            raise ValueError(f"cannot pad {len(encoding.input_ids)} tokens to pad_to={length}")
        return Encoding(
            input_ids=encoding.input_ids + [self.pad_token_id] * extra,
            bbox=encoding.bbox + [list(SPECIAL_BOX) for _ in range(extra)],
            attention_mask=encoding.attention_mask + [0] * extra,
            word_ids=encoding.word_ids + [None] * extra,
            labels=None if encoding.labels is None else encoding.labels + [IGNORE_LABEL] * extra,
        )


class BatchEncoding(dict):
    """What `LayoutLMv3Tokenizer.__call__` returns: transformers' keys (input_ids, attention_mask, bbox, labels,
    overflow_to_sample_mapping) plus `word_ids(i)`, as its BatchEncoding."""

    @classmethod
    def of(
        cls, rows: list[Encoding], owners: list[int] | None, batched: bool, return_tensors: str | None
    ) -> BatchEncoding:
        fields = ["input_ids", "attention_mask", "bbox"] + (["labels"] if rows and rows[0].labels is not None else [])
        nested = batched or owners is not None or return_tensors is not None  # tensors always have a batch axis
        values = {name: [getattr(row, name) for row in rows] for name in fields}
        if owners is not None:
            values["overflow_to_sample_mapping"] = owners
        if return_tensors == "pt":
            import torch

            if len({len(row.input_ids) for row in rows}) > 1:
                raise ValueError("rows of different lengths cannot make one tensor: pass padding=True or 'max_length'")
            values = {name: torch.tensor(value) for name, value in values.items()}
        elif return_tensors is not None:
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        if not nested:
            values = {name: value[0] for name, value in values.items()}
        encoding = cls(values)
        encoding._word_ids = [row.word_ids for row in rows]
        return encoding

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        """The page word index of each token of row `batch_index` (None for specials and padding)."""
        return self._word_ids[batch_index]


@dataclass
class _Page:
    """A whole page's content tokens (no specials), before it is cut into windows."""

    ids: list[int]
    word_ids: list[int]
    boxes: list[list[int]]
    labels: list[int] | None  # per token: the word's label on its first sub-token, IGNORE_LABEL on later ones


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> LayoutLMv3Tokenizer:
    """Train a new byte-level BPE vocabulary on ``texts`` (words or lines of text).

    Special tokens get ids <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4 (TRAINED_MASK_ID), then the 256 byte symbols,
    then the merges; texts are pre-tokenized exactly as at encoding time (prefix space per word). The result may hold
    fewer than ``vocab_size`` ids when the corpus runs out of pairs seen ``min_frequency`` times.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (special tokens + 256 bytes), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return LayoutLMv3Tokenizer(model["vocab"], merges, model_max_length)


def _build_backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """The Rust tokenizer, configured as transformers' LayoutLMv3Tokenizer configures it (minus post-processing)."""
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    return backend


def _first_sub_token_labels(word_ids: list[int], word_labels: list[int]) -> list[int]:
    """Per token: the word's label on its first sub-token, IGNORE_LABEL on later sub-tokens."""
    return [word_labels[word] if i == 0 or word != word_ids[i - 1] else IGNORE_LABEL for i, word in enumerate(word_ids)]


def _check_vocab(vocab: dict[str, int]) -> None:
    """Ids must be exactly 0..n-1 (so vocab_size sizes the embedding) and hold every special token."""
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError("vocabulary ids must be exactly 0..len(vocab)-1, each used once")
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(f"vocabulary lacks the special tokens {missing}")
    fixed = {CLS_TOKEN: CLS_ID, PAD_TOKEN: PAD_ID, SEP_TOKEN: SEP_ID}
    moved = {token: vocab[token] for token, expected in fixed.items() if vocab[token] != expected}
    if moved:
        raise ValueError(f"vocabulary puts {moved}; RoBERTa-format vocabularies have <s>=0, <pad>=1, </s>=2")


def _fingerprint(vocab: dict[str, int], merges: list[tuple[str, str]]) -> str:
    """Hash of the canonical vocabulary (tokens in id order) and merges (in priority order), file format aside."""
    canonical = json.dumps(
        {"vocab": sorted(vocab.items(), key=lambda item: item[1]), "merges": [list(pair) for pair in merges]},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _validate(
    words: Sequence[str], boxes: Sequence[Sequence[int]], labels: Sequence[int] | None
) -> tuple[list[list[int]], list[int] | None]:
    """Check words/boxes/labels agree and boxes are normalised; return them as plain Python ints.

    Raises ValueError naming the offending word, since a bad box silently poisons the 2-D position embeddings.
    """
    if len(words) != len(boxes):
        raise ValueError(f"got {len(words)} words but {len(boxes)} boxes")
    if labels is not None and len(labels) != len(words):
        raise ValueError(f"got {len(words)} words but {len(labels)} labels")
    for index, word in enumerate(words):
        if not isinstance(word, str):
            raise ValueError(f"word {index} is {type(word).__name__}, not str: {word!r}")
    clean_boxes = [_check_box(index, words[index], box) for index, box in enumerate(boxes)]
    clean_labels = None if labels is None else [_as_int(f"label of word {i}", label) for i, label in enumerate(labels)]
    return clean_boxes, clean_labels


def _check_box(index: int, word: str, box: Sequence[int]) -> list[int]:
    where = f"box of word {index} ({word!r})"
    if not hasattr(box, "__len__") or len(box) != 4:
        raise ValueError(f"{where} must have 4 coordinates [x0, y0, x1, y1], got {box!r}")
    x0, y0, x1, y1 = coords = [_as_int(where, value) for value in box]
    if not all(0 <= value <= MAX_COORD for value in coords):
        raise ValueError(f"{where} must lie in 0..{MAX_COORD} (normalise pixels by 1000/page size), got {box!r}")
    if x0 > x1 or y0 > y1:
        raise ValueError(f"{where} must have x0 <= x1 and y0 <= y1, got {box!r}")
    return coords


def _as_int(where: str, value: object) -> int:
    """Accept Python and NumPy integers; reject floats, which would hide an unrounded normalisation."""
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{where} must hold integers, got {value!r}") from None
