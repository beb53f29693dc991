"""Shard reading: decoding, collation, exact and resampled splitting, exact resume, corrupt-shard tolerance."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import layoutlmv3.data.loader as loader_module
from layoutlmv3.data import (
    Collator,
    PageSample,
    WeightedShards,
    build_train_loader,
    decode_sample,
    list_shards,
    read_manifest,
)
from layoutlmv3.data.collate import CLS_ID, PAD_ID, SEP_ID
from layoutlmv3.data.sample_format import (
    IMAGE_FILE,
    IMAGE_SIZE,
    MANIFEST_FILE,
    META_FILE,
    TOKENIZER_IMAGE_FILE,
    TOKENS_FILE,
    sample_key,
)
from tests.shard_files import assert_same_batches, batch_keys, page_members, png_bytes, write_dataset

UNEVEN_COUNTS = (7, 3, 9, 1, 6)  # 5 shards for 2 ranks x 2 workers: some workers get 2 shards, one gets none
BAD_KEY = sample_key("doc/2.pdf", 4)  # shard 2's sample 4 has an undecodable image
BATCH = 4


# ---------------------------------------------------------------- fixture data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """5 uneven shards (26 samples), one of them undecodable."""
    root = tmp_path_factory.mktemp("shards")
    return root, write_dataset(root, UNEVEN_COUNTS, bad_key=BAD_KEY)


def _sample(length: int, key: str = "k", seed: int = 0) -> PageSample:
    return decode_sample(page_members(np.random.default_rng(seed), key, length))


# ---------------------------------------------------------------- shards and decoding


def test_list_shards_from_manifest_pattern_and_paths(dataset: tuple[Path, list[str]]) -> None:
    root, _ = dataset
    from_dir = list_shards(root)
    assert [shard.samples for shard in from_dir] == list(UNEVEN_COUNTS)
    assert list_shards(root / MANIFEST_FILE) == from_dir
    pattern = list_shards(str(root / "train-{000000..000004}.tar"))
    assert [shard.url for shard in pattern] == [shard.url for shard in from_dir]
    assert all(shard.samples is None for shard in pattern)
    assert [shard.url for shard in list_shards([root / "a.tar", "b.tar"])] == [str(root / "a.tar"), "b.tar"]
    assert read_manifest(root)["total_samples"] == sum(UNEVEN_COUNTS)


def test_manifest_of_another_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format_version": 99, "shards": []}))
    with pytest.raises(ValueError, match="format_version"):
        list_shards(tmp_path)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_decode_round_trip(mode: str) -> None:
    raw = page_members(np.random.default_rng(1), "doc_p00000", 37, mode=mode)
    page = decode_sample(raw)
    with np.load(io.BytesIO(raw[TOKENS_FILE])) as npz:
        np.testing.assert_array_equal(page.input_ids, npz["input_ids"])
        np.testing.assert_array_equal(page.bbox, npz["bbox"])
        np.testing.assert_array_equal(page.word_ids, npz["word_ids"])
    assert page.key == "doc_p00000" and page.meta == json.loads(raw[META_FILE])
    assert page.input_ids.dtype == np.int32 and page.bbox.dtype == np.int16 and page.bbox.shape == (37, 4)
    for image, name, size in ((page.image, IMAGE_FILE, IMAGE_SIZE), (page.tokenizer_image, TOKENIZER_IMAGE_FILE, 112)):
        assert image.shape == (size, size, 3) and image.dtype == np.uint8 and not image.flags.writeable
        expected = np.asarray(Image.open(io.BytesIO(raw[name])).convert("RGB"))
        np.testing.assert_array_equal(image, expected)


def test_decode_rejects_incomplete_and_malformed_samples() -> None:
    raw = page_members(np.random.default_rng(1), "k", 5)
    with pytest.raises(ValueError, match="lacks"):
        decode_sample({name: value for name, value in raw.items() if name != META_FILE})
    small = dict(raw, **{IMAGE_FILE: png_bytes(np.zeros((100, 100), dtype=np.uint8))})
    with pytest.raises(ValueError, match="expected 224x224"):
        decode_sample(small)


# ---------------------------------------------------------------- collation


@pytest.mark.parametrize(("pad_to", "length"), [("max_length", 64), ("longest", 32), (8, 32), (48, 48)])
def test_collate_shapes_specials_and_padding(pad_to: str | int, length: int) -> None:
    pages = [_sample(30, "a"), _sample(5, "b", seed=1)]
    batch = Collator(max_length=64, pad_to=pad_to)(pages)
    assert batch["keys"] == ["a", "b"]
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["word_ids"].shape == (2, length)
    assert batch["bbox"].shape == (2, length, 4) and batch["input_ids"].dtype == torch.int64
    assert batch["pixel_values"].shape == (2, 3, 224, 224) and batch["pixel_values"].dtype == torch.float32
    assert batch["tokenizer_pixel_values"].shape == (2, 3, 112, 112)
    for row, page in enumerate(pages):
        n = len(page.input_ids)
        ids, boxes = batch["input_ids"][row], batch["bbox"][row]
        assert ids[0] == CLS_ID and ids[n + 1] == SEP_ID and (ids[n + 2 :] == PAD_ID).all()
        assert ids[1 : n + 1].tolist() == page.input_ids.tolist()
        assert boxes[1 : n + 1].tolist() == page.bbox.tolist()
        assert (boxes[0] == 0).all() and (boxes[n + 1 :] == 0).all()
        assert batch["attention_mask"][row].tolist() == [1] * (n + 2) + [0] * (length - n - 2)
        assert batch["word_ids"][row, 1 : n + 1].tolist() == page.word_ids.tolist()
        assert (batch["word_ids"][row, [0, *range(n + 1, length)]] == -1).all()


def test_pixel_values_match_layoutlmv3_image_processor() -> None:
    from transformers import LayoutLMv3ImageProcessorPil

    pages = [_sample(3, "a"), _sample(3, "b", seed=2)]
    batch = Collator(max_length=16)(pages)
    processor = LayoutLMv3ImageProcessorPil(apply_ocr=False)
    expected = processor([np.asarray(page.image) for page in pages], return_tensors="pt").pixel_values
    torch.testing.assert_close(batch["pixel_values"], expected, atol=1e-6, rtol=0)
    tokenizer_expected = torch.stack([torch.from_numpy(p.tokenizer_image.copy()).permute(2, 0, 1) for p in pages])
    torch.testing.assert_close(batch["tokenizer_pixel_values"], tokenizer_expected.float() / 255)


def test_random_crop_is_a_window_fixed_by_seed_epoch_and_key() -> None:
    page = _sample(200, "long")
    collator = Collator(max_length=34)
    starts = set()
    for epoch in range(12):
        ids = collator([page], epoch)["input_ids"][0]
        assert ids[0] == CLS_ID and ids[33] == SEP_ID
        content = ids[1:33].numpy()
        start = int(np.flatnonzero(page.input_ids == content[0])[0])
        np.testing.assert_array_equal(content, page.input_ids[start : start + 32])
        assert torch.equal(ids, collator([_sample(3, "other"), page], epoch)["input_ids"][1])
        starts.add(start)
    assert len(starts) > 1
    assert not torch.equal(collator([page], 0)["input_ids"], Collator(max_length=34, seed=1)([page], 0)["input_ids"])


def test_start_crop_keeps_the_first_tokens_and_short_pages_are_whole() -> None:
    page = _sample(200, "long")
    batch = Collator(max_length=34, crop="start")([page, _sample(10, "short")], epoch=3)
    assert batch["input_ids"][0, 1:33].tolist() == page.input_ids[:32].tolist()
    assert batch["attention_mask"][1].sum() == 12


def test_segment_boxes_give_each_token_its_line_box() -> None:
    page = _sample(40, "p")
    batch = Collator(max_length=64, boxes="segment")([page])
    line_boxes, line_ids = page.meta["line_boxes"], page.meta["line_ids"]
    expected = [line_boxes[line_ids[word]] for word in page.word_ids]
    assert batch["bbox"][0, 1:41].tolist() == expected


# ---------------------------------------------------------------- exact (non-resampled) epochs


def test_exact_epochs_see_every_sample_once_across_ranks_and_workers(dataset: tuple[Path, list[str]]) -> None:
    root, keys = dataset
    loaders = [
        build_train_loader(root, BATCH, rank=rank, world_size=2, num_workers=2, resampled=False, shuffle_buffer=5)
        for rank in range(2)
    ]
    orders = []
    for _ in range(2):
        seen = [batch_keys(list(loader)) for loader in loaders]
        assert sorted(seen[0] + seen[1]) == sorted(keys)
        orders.append(seen)
    assert orders[0] != orders[1]  # shard order and shuffle change with the epoch
    assert all(loader.epoch == 2 for loader in loaders)


def test_length_bucketing_keeps_every_sample_and_cuts_padding(dataset: tuple[Path, list[str]]) -> None:
    root, keys = dataset
    padded, batch_counts = {}, {}
    for buckets in (0, 4):
        loader = build_train_loader(
            root, BATCH, num_workers=0, resampled=False, shuffle_buffer=5, length_bucket_batches=buckets,
            collate_fn=Collator(max_length=512, pad_to="longest", seed=0),
        )  # fmt: skip
        batches = list(loader)
        assert sorted(batch_keys(batches)) == sorted(keys)
        padded[buckets] = sum(batch["input_ids"].numel() for batch in batches)
        batch_counts[buckets] = len(batches)
    assert batch_counts[4] == batch_counts[0] == loader.epoch_batches
    assert padded[4] < 0.9 * padded[0], padded


def test_length_bucketing_needs_at_least_two_batches(dataset: tuple[Path, list[str]]) -> None:
    with pytest.raises(ValueError, match="length_bucket_batches"):
        build_train_loader(dataset[0], BATCH, length_bucket_batches=1)


def test_exact_epoch_batch_count_comes_from_the_manifest(tmp_path: Path) -> None:
    write_dataset(tmp_path, UNEVEN_COUNTS)
    for rank in range(2):
        loader = build_train_loader(tmp_path, BATCH, rank=rank, world_size=2, num_workers=2, resampled=False)
        for _ in range(2):
            expected = loader.epoch_batches
            assert expected == len(list(loader))


# ---------------------------------------------------------------- resampled epochs


def test_resampled_ranks_get_equal_batch_counts_deterministically(dataset: tuple[Path, list[str]]) -> None:
    root, keys = dataset

    def run(rank: int, seed: int) -> list[list[str]]:
        loader = build_train_loader(root, BATCH, rank=rank, world_size=2, num_workers=2, seed=seed, shuffle_buffer=8)
        assert loader.epoch_batches == sum(UNEVEN_COUNTS) // (2 * BATCH)
        return [[batch["keys"] for batch in list(loader)] for _ in range(2)]

    runs = {(rank, seed): run(rank, seed) for rank in range(2) for seed in (0, 1)}
    for epochs in runs.values():
        assert [len(epoch) for epoch in epochs] == [3, 3]
        assert all(len(batch) == BATCH and set(batch) <= set(keys) for epoch in epochs for batch in epoch)
        assert epochs[0] != epochs[1]
    assert runs[0, 0] == run(0, 0)
    assert runs[0, 0] != runs[1, 0] and runs[0, 0] != runs[0, 1]


def test_resampled_epoch_length_is_configurable_and_needed_without_manifest(dataset: tuple[Path, list[str]]) -> None:
    root, _ = dataset
    loader = build_train_loader(root, 2, num_workers=0, epoch_length=5, shuffle_buffer=0)
    assert len(list(loader)) == 5
    with pytest.raises(ValueError, match="epoch_length"):
        build_train_loader(str(root / "train-{000000..000004}.tar"), 2, num_workers=0)


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("resampled", [False, True])
@pytest.mark.parametrize(("num_workers", "buckets"), [(0, 0), (2, 0), (0, 3)])
def test_resume_continues_with_the_exact_same_batches(
    dataset: tuple[Path, list[str]], resampled: bool, num_workers: int, buckets: int
) -> None:
    root, _ = dataset
    kwargs = dict(rank=0, world_size=2, num_workers=num_workers, seed=3, shuffle_buffer=6, resampled=resampled)
    kwargs["length_bucket_batches"] = buckets
    reference = build_train_loader(root, 2, **kwargs)
    epochs = [list(reference), list(reference)]
    assert len(epochs[0]) >= 4
    for stop in (1, 3, len(epochs[0]) - 1, len(epochs[0])):  # early, mid-epoch, before the last batch, at the end
        original = build_train_loader(root, 2, **kwargs)
        iterator = iter(original)
        for _ in range(stop):
            next(iterator)
        state = original.state_dict()
        resumed = build_train_loader(root, 2, **kwargs)
        resumed.load_state_dict(state)
        rest = list(resumed)
        if stop == len(epochs[0]):  # after the last batch: resampled epochs have a known end, exact ones do not
            if not resampled:
                assert rest == []
                rest = list(resumed)
            assert_same_batches(rest, epochs[1])
        else:
            assert_same_batches(rest, epochs[0][stop:])
            assert_same_batches(list(resumed), epochs[1])


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A corpus of 3 big shards (20 samples each) and one of 5 small shards (2 samples each)."""
    big, small = tmp_path_factory.mktemp("big"), tmp_path_factory.mktemp("small")
    write_dataset(big, (20, 20, 20), source="big")
    write_dataset(small, (2, 2, 2, 2, 2), source="small")
    return big, small


def test_a_mixture_follows_its_weights_whatever_the_shard_sizes(two_corpora: tuple[Path, Path]) -> None:
    """Samples, not shards, are drawn by weight: 75% from the small-shard corpus (drawing shards by weight would
    give it about 14% of the samples here, its shards being ten times smaller)."""
    big, small = two_corpora
    mixture = [WeightedShards(big, 1.0), WeightedShards(small, 3.0)]
    loader = build_train_loader(mixture, batch_size=4, num_workers=0, seed=1, epoch_length=60, shuffle_buffer=0)
    keys = batch_keys(list(loader))
    share = sum(key.startswith("small") for key in keys) / len(keys)
    assert len(keys) == 240 and abs(share - 0.75) < 0.09, share  # 3.2 binomial standard deviations
    with pytest.raises(ValueError, match="resampled mode"):
        build_train_loader(mixture, batch_size=4, resampled=False)
    with pytest.raises(ValueError, match="weights must be > 0"):
        build_train_loader([WeightedShards(big, 1.0), WeightedShards(small, 0.0)], batch_size=4)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_mixture_resumes_with_the_exact_same_batches(two_corpora: tuple[Path, Path], num_workers: int) -> None:
    big, small = two_corpora
    mixture = [WeightedShards(big, 0.8), WeightedShards(small, 0.2)]
    kwargs = dict(rank=1, world_size=2, num_workers=num_workers, seed=5, shuffle_buffer=6, epoch_length=6)
    reference = list(build_train_loader(mixture, 2, **kwargs))
    original = build_train_loader(mixture, 2, **kwargs)
    iterator = iter(original)
    for _ in range(4):
        next(iterator)
    resumed = build_train_loader(mixture, 2, **kwargs)
    resumed.load_state_dict(original.state_dict())
    assert_same_batches(list(resumed), reference[4:])
    reweighted = build_train_loader([WeightedShards(big, 0.5), WeightedShards(small, 0.5)], 2, **kwargs)
    with pytest.raises(ValueError, match="cannot resume: state has weights=\\[0.8, 0.2\\]"):
        reweighted.load_state_dict(original.state_dict())


def test_resume_skips_consumed_samples_without_decoding_them(
    dataset: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = dataset
    decoded = []

    def counting_decode(raw: dict) -> PageSample:
        decoded.append(raw["__key__"])
        return decode_sample(raw)

    monkeypatch.setattr(loader_module, "decode_sample", counting_decode)
    kwargs = dict(num_workers=0, resampled=False, shuffle_buffer=6)
    original = build_train_loader(root, 2, **kwargs)
    iterator = iter(original)
    for _ in range(5):
        next(iterator)
    state, before = original.state_dict(), len(decoded)
    resumed = build_train_loader(root, 2, **kwargs)
    resumed.load_state_dict(state)
    list(resumed)
    assert before == state["worker_samples"][0]  # raw samples consumed, the undecodable one included
    assert len(decoded) - before == sum(UNEVEN_COUNTS) - before  # the resumed run decodes only the rest


def test_resume_refuses_a_different_layout(dataset: tuple[Path, list[str]]) -> None:
    root, _ = dataset
    state = build_train_loader(root, BATCH, num_workers=0, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        build_train_loader(root, BATCH, num_workers=0, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="num_workers"):
        build_train_loader(root, BATCH, num_workers=1, seed=1).load_state_dict(state)


# ---------------------------------------------------------------- corrupt data


def test_corrupt_and_missing_shards_are_logged_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = write_dataset(tmp_path, (4, 6, 5))
    urls = [shard.url for shard in list_shards(tmp_path)]
    truncated, garbage, missing = Path(urls[1]), tmp_path / "garbage.tar", tmp_path / "missing.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    garbage.write_bytes(np.random.default_rng(0).bytes(30_000))
    with caplog.at_level(logging.WARNING, logger="layoutlmv3.data.loader"):
        loader = build_train_loader([*urls, str(garbage), str(missing)], 3, num_workers=0, resampled=False)
        seen = batch_keys(list(loader))
    in_truncated = {sample_key("doc/1.pdf", page) for page in range(6)}
    assert len(seen) == len(set(seen)) and set(seen) <= set(keys)
    assert set(keys) - in_truncated <= set(seen)  # the intact shards are read whole ...
    assert 0 < len(set(seen) & in_truncated) < len(in_truncated)  # ... and the truncated one up to the damage
    for path in (truncated, garbage, missing):
        assert str(path) in caplog.text
