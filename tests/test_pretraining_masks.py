"""Statistics of the pretraining masks over a corpus, and WPA labels against a brute-force recomputation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from layoutlmv3.data.collate import Collator
from layoutlmv3.data.decode import PageSample
from layoutlmv3.pretraining.collator import MaskingConfig, PretrainingCollator
from layoutlmv3.pretraining.masking import IGNORE, block_mask, patch_edges, span_mask, wpa_labels

SPECIALS = (0, 1, 2, 3, 50264)
MASK_ID = 50264


def runs(mask: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def fake_page(key: str, rng: np.random.Generator, length: int) -> PageSample:
    """A page of `length` content tokens with boxes laid out in reading order, like OCR words."""
    words = max(1, length // 2)
    word_ids = np.sort(rng.integers(0, words, length)).astype(np.int32)
    rows, cols = word_ids // 8, word_ids % 8
    x0 = cols * 120 + rng.integers(0, 20, length)
    y0 = (rows * 23) % 960
    bbox = np.stack([x0, y0, x0 + rng.integers(10, 100, length), y0 + 18], axis=1).clip(0, 1000).astype(np.int16)
    image = np.zeros((224, 224, 3), np.uint8)
    return PageSample(
        key=key,
        input_ids=rng.integers(5, 50000, length).astype(np.int32),
        bbox=bbox,
        word_ids=word_ids,
        image=image,
        tokenizer_image=np.zeros((112, 112, 3), np.uint8),
        meta={},
    )


@pytest.fixture(scope="module")
def corpus_batches():
    rng = np.random.default_rng(0)
    pages = [fake_page(f"page{i}", rng, int(rng.integers(30, 700))) for i in range(400)]
    collator = PretrainingCollator(Collator(max_length=512, seed=3), MASK_ID, 50265, SPECIALS)
    return [(pages[i : i + 8], collator(pages[i : i + 8])) for i in range(0, len(pages), 8)]


def test_text_mask_ratio_and_span_length(corpus_batches):
    masked = maskable = 0
    span_lengths = []
    for _, batch in corpus_batches:
        labels = batch["mlm_labels"].numpy()
        candidates = batch["attention_mask"].numpy().astype(bool)
        candidates[:, 0] = False
        candidates[np.arange(len(candidates)), candidates.sum(1)] = False  # </s>
        masked += (labels != IGNORE).sum()
        maskable += candidates.sum()
        for row in labels:
            span_lengths.extend(runs(row != IGNORE))
    assert abs(masked / maskable - 0.30) <= 0.02
    assert abs(np.mean(span_lengths) - 3.0) <= 0.25  # E[max(1, Poisson(3))] = 3.05, last spans cut a little


def test_no_labels_on_specials_or_padding(corpus_batches):
    for _, batch in corpus_batches:
        original = batch["mlm_labels"].numpy()
        attention = batch["attention_mask"].numpy().astype(bool)
        lengths = attention.sum(1)
        rows = np.arange(len(lengths))
        for labels in (original, batch["wpa_labels"].numpy()):
            assert (labels[~attention] == IGNORE).all()
            assert (labels[:, 0] == IGNORE).all()
            assert (labels[rows, lengths - 1] == IGNORE).all()
        assert not np.isin(original[original != IGNORE], SPECIALS).any()


def test_replacement_rule(corpus_batches):
    counts = {"mask": 0, "random": 0, "kept": 0}
    for _, batch in corpus_batches:
        labels = batch["mlm_labels"].numpy()
        ids = batch["input_ids"].numpy()
        selected = labels != IGNORE
        counts["mask"] += (ids[selected] == MASK_ID).sum()
        counts["kept"] += (ids[selected] == labels[selected]).sum()
        counts["random"] += ((ids[selected] != MASK_ID) & (ids[selected] != labels[selected])).sum()
        unmasked_text = (labels == IGNORE) & batch["attention_mask"].numpy().astype(bool)
        assert (ids[unmasked_text] != MASK_ID).all()
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.8) < 0.02
    assert abs(counts["random"] / total - 0.1) < 0.02
    assert abs(counts["kept"] / total - 0.1) < 0.02


def test_image_mask_ratio_and_blocks():
    rng = np.random.default_rng(1)
    masks = [block_mask(14, 0.4, rng, min_block=16) for _ in range(1000)]
    assert abs(np.mean(masks) - 0.40) <= 0.02
    for mask in masks:
        labelled, count = ndimage.label(mask.reshape(14, 14))
        sizes = np.bincount(labelled.ravel())[1:]
        assert count > 0 and sizes.min() >= 16  # every masked region holds a whole block of >= 16 patches


def brute_force_wpa(boxes, labelable, text_mask, patch_mask):
    """Rasterise each box on the 1000 x 1000 grid and count the unit cells lying on masked patches."""
    edges = patch_edges(14)
    cell_patch = np.searchsorted(edges, np.arange(1000), side="right") - 1  # patch column/row of each unit cell
    masked_cells = patch_mask.reshape(14, 14)[cell_patch[:, None], cell_patch[None, :]]  # [y, x]
    labels = np.full(len(boxes), IGNORE)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        if not labelable[i] or text_mask[i]:
            continue
        if x1 > x0 and y1 > y0:
            fraction = masked_cells[y0:y1, x0:x1].mean()
        else:
            fraction = float(masked_cells[min((y0 + y1) // 2, 999), min((x0 + x1) // 2, 999)])
        labels[i] = int(fraction >= 0.5)
    return labels


def test_wpa_labels_equal_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(30):
        count = 60
        x0 = rng.integers(0, 1000, count)
        y0 = rng.integers(0, 1000, count)
        boxes = np.stack([x0, y0, np.minimum(1000, x0 + rng.integers(0, 300, count)),
                          np.minimum(1000, y0 + rng.integers(0, 120, count))], axis=1)  # fmt: skip
        labelable = rng.random(count) < 0.9
        text_mask = rng.random(count) < 0.3
        patch_mask = block_mask(14, 0.4, rng)
        expected = brute_force_wpa(boxes, labelable, text_mask, patch_mask)
        assert np.array_equal(wpa_labels(boxes, labelable, text_mask, patch_mask, 14), expected)


def test_wpa_labels_in_batches_follow_the_masks(corpus_batches):
    for _, batch in corpus_batches[:5]:
        for row in range(len(batch["keys"])):
            attention = batch["attention_mask"][row].numpy().astype(bool)
            labelable = attention & ~np.isin(batch["input_ids"][row].numpy(), SPECIALS)
            labelable |= batch["mlm_labels"][row].numpy() != IGNORE  # masked tokens may now hold <mask>
            labelable[0] = False
            text_mask = batch["mlm_labels"][row].numpy() != IGNORE
            expected = brute_force_wpa(
                batch["bbox"][row].numpy(), labelable, text_mask, batch["patch_mask"][row].numpy()
            )
            assert np.array_equal(batch["wpa_labels"][row].numpy(), expected)
    both = np.concatenate([b["wpa_labels"].numpy().ravel() for _, b in corpus_batches])
    assert (both == 0).any() and (both == 1).any()


def test_collator_is_reproducible_and_changes_with_epoch():
    rng = np.random.default_rng(4)
    pages = [fake_page(f"p{i}", rng, 200) for i in range(4)]
    collator = PretrainingCollator(Collator(max_length=128, seed=9), MASK_ID, 50265, SPECIALS)
    first, again, other_epoch = collator(pages), collator(pages), collator(pages, epoch=1)
    for key in ("input_ids", "mlm_labels", "patch_mask", "wpa_labels"):
        assert (first[key] == again[key]).all()
    assert not (first["patch_mask"] == other_epoch["patch_mask"]).all()
    single = collator(pages[2:3])  # a sample's masks do not depend on the rest of its batch
    assert (single["mlm_labels"][0] == first["mlm_labels"][2]).all()


def test_span_mask_exact_budget_and_config_validation():
    rng = np.random.default_rng(5)
    maskable = np.ones(100, bool)
    maskable[[0, 50, 99]] = False
    mask = span_mask(maskable, 0.3, 3.0, rng)
    assert mask.sum() == round(0.3 * 97) and not mask[[0, 50, 99]].any()
    with pytest.raises(ValueError, match="text_mask_ratio"):
        MaskingConfig(text_mask_ratio=1.5)
    with pytest.raises(ValueError, match="must not exceed 1"):
        MaskingConfig(mask_token_share=0.9, random_token_share=0.2)
