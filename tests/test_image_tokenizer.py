"""Tests for the VQ-VAE image tokenizer of masked image modeling and its training loop (CPU, tiny sizes)."""

from __future__ import annotations

import io
import logging
import math
import runpy
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
import yaml
from PIL import Image

from data_prep.synth import page_id
from layoutlmv3.pretraining.image_tokenizer import (
    ImageTokenizer,
    ImageTokenizerConfig,
    VectorQuantizer,
    VisualTokenizer,
)
from layoutlmv3.pretraining.image_tokenizer_training import (
    DataConfig,
    ImageSource,
    RunConfig,
    TrainingConfig,
    evaluate,
    held_out_images,
    image_source,
    is_held_out,
    load_run_config,
    run_config_from_dict,
    train,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
GRID = 14


def _synthetic_pages(count: int) -> list[Image.Image]:
    """Document-like 112 px pages: the synthetic corpus when it imports, else PIL-drawn text lines."""
    try:
        from data_prep.synth import generate_page
    except ImportError:
        return [_drawn_page(index) for index in range(count)]
    return [
        generate_page(5, index).image.convert("RGB").resize((112, 112), Image.Resampling.BICUBIC)
        for index in range(count)
    ]


def _drawn_page(index: int) -> Image.Image:
    from PIL import ImageDraw

    rng = np.random.default_rng(index)
    image = Image.new("RGB", (448, 448), "white")
    draw = ImageDraw.Draw(image)
    y = 20
    while y < 420:
        x = int(rng.integers(10, 60))
        draw.text((x, y), " ".join(f"word{rng.integers(1000)}" for _ in range(5)), fill="black")
        y += int(rng.integers(14, 40))
    return image.resize((112, 112), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def page_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pages")
    for index, page in enumerate(_synthetic_pages(64)):
        page.save(folder / f"page_{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def trained(page_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageTokenizer, dict, dict, Path]:
    """A tiny tokenizer trained for a few hundred steps; (model, metrics before, metrics after, run directory)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("run")
    config = RunConfig(
        model=ImageTokenizerConfig.from_flavor("tiny"),
        data=DataConfig(images=str(page_folder), eval_fraction=0.15, eval_images=16, cache_in_memory=True),
        training=TrainingConfig(
            out_dir=str(out), steps=300, batch_size=16, learning_rate=3e-3, warmup_steps=20, eval_every=1000,
            grid_images=4, device="cpu",
        ),
    )  # fmt: skip
    eval_images = held_out_images(image_source(config.data), config.data, 112)
    before = evaluate(ImageTokenizer(config.model), eval_images, 16, "fp32")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine, 2 threads ran these small convolutions ~5x slower
    try:
        after = train(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    return ImageTokenizer.from_pretrained(out), before, after, out


def _images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


# ---- model ---------------------------------------------------------------------------------------------------
def test_encode_gives_196_codes_in_range_and_decode_gives_images() -> None:
    model = ImageTokenizer(ImageTokenizerConfig.from_flavor("tiny"))
    codes = model.encode(_images(3))
    assert codes.shape == (3, 196) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < 512
    images = model.decode(codes)
    assert images.shape == (3, 3, 112, 112) and images.min() >= 0 and images.max() <= 1
    output = model(_images(3))
    assert output.reconstruction.shape == (3, 3, 112, 112) and output.codes.shape == (3, 196)
    assert output.loss.ndim == 0 and 1 <= output.perplexity <= 512
    assert isinstance(model, VisualTokenizer) and model.codebook_size == 512


def test_base_flavor_is_dit_sized() -> None:
    config = ImageTokenizerConfig.from_flavor("base")
    assert (config.codebook_size, config.grid_size, config.num_tokens) == (8192, 14, 196)


def test_encode_is_deterministic_and_never_changes_the_codebook() -> None:
    model = ImageTokenizer(ImageTokenizerConfig.from_flavor("tiny")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(model.encode(_images()), model.encode(_images()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_changing_one_patch_changes_its_code_and_no_other_in_row_major_order(trained) -> None:
    """Inverting the 8x8 pixels of token (r, c) changes code r*14+c and leaves the other 195 codes alone."""
    model = trained[0]
    page = torch.from_numpy(np.array(_synthetic_pages(1)[0])).permute(2, 0, 1)[None].float() / 255
    codes = model.encode(page)[0]
    for row, column in [(1, 12), (12, 2), (5, 9), (9, 5), (0, 0), (13, 13)]:
        edited = page.clone()
        patch = edited[:, :, 8 * row : 8 * row + 8, 8 * column : 8 * column + 8]
        edited[:, :, 8 * row : 8 * row + 8, 8 * column : 8 * column + 8] = 1 - patch
        changed = torch.nonzero(model.encode(edited)[0] != codes).flatten().tolist()
        assert changed == [row * GRID + column], f"editing token ({row}, {column}) changed codes {changed}"


def test_dead_codes_restart_onto_encoder_outputs() -> None:
    """Codes no vector chose are moved onto batch vectors at once; used codes follow their vectors by EMA."""
    config = ImageTokenizerConfig.from_flavor("tiny", codebook_size=64, dead_code_threshold=0.5)
    quantizer = VectorQuantizer(config)
    centres = F.normalize(torch.randn(200, config.code_dim) * 0.3 + torch.ones(config.code_dim), dim=1)  # one cap
    vectors = F.normalize(centres.repeat(4, 1) + 0.01 * torch.randn(800, config.code_dim), dim=1)

    def fit() -> torch.Tensor:  # cosine similarity of each code to its nearest vector
        return (quantizer.codebook @ vectors.T).max(dim=1).values

    assert fit().max() < 0.8
    unused = torch.bincount(quantizer(vectors, update=False)[1], minlength=64) == 0
    quantizer(vectors, update=True)
    assert unused.sum() > 32 and fit()[unused].min() > 0.999
    for _ in range(100):
        quantizer(vectors, update=True)
    assert fit().min() > 0.9
    assert torch.allclose(quantizer.codebook.norm(dim=1), torch.ones(64))
    assert quantizer(vectors, update=False)[1].unique().numel() > 56


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(2, 3, 224, 224), r"\[B, 3, 112, 112\]"),
        (torch.rand(3, 112, 112), r"\[B, 3, 112, 112\]"),
        (torch.rand(2, 1, 112, 112), r"\[B, 3, 112, 112\]"),
        (torch.randint(0, 255, (2, 3, 112, 112), dtype=torch.uint8), "float"),
        (torch.rand(2, 3, 112, 112) * 2 - 1, "0..1"),
        (torch.full((1, 3, 112, 112), float("nan")), "0..1"),
    ],
)
def test_bad_images_raise(images: torch.Tensor, message: str) -> None:
    model = ImageTokenizer(ImageTokenizerConfig.from_flavor("tiny"))
    with pytest.raises(ValueError, match=message):
        model.encode(images)
    with pytest.raises(ValueError, match=message):
        model(images)


def test_bad_codes_and_configs_raise() -> None:
    model = ImageTokenizer(ImageTokenizerConfig.from_flavor("tiny"))
    with pytest.raises(ValueError, match="0..511"):
        model.decode(torch.full((1, 196), 512))
    with pytest.raises(ValueError, match="int64"):
        model.decode(torch.zeros(1, 100, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple"):
        ImageTokenizerConfig(downsample_factor=5)
    with pytest.raises(ValueError, match="dead_code_threshold"):
        ImageTokenizerConfig(dead_code_threshold=0)
    with pytest.raises(ValueError, match="multiple"):
        ImageTokenizerConfig(image_size=100)
    with pytest.raises(ValueError, match="unknown ImageTokenizerConfig fields"):
        ImageTokenizerConfig.from_dict({"codebook_sise": 10})
    with pytest.raises(ValueError, match="unknown image tokenizer flavor"):
        ImageTokenizerConfig.from_flavor("huge")


def test_save_load_round_trip_gives_identical_codes(trained, tmp_path: Path) -> None:
    model = trained[0]
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = ImageTokenizer.from_pretrained(tmp_path)
    assert loaded.config == model.config
    images = _images(4, seed=3)
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert torch.equal(loaded.decode(loaded.encode(images)), model.decode(model.encode(images)))


def test_from_pretrained_refuses_directories_without_safetensors(tmp_path: Path) -> None:
    ImageTokenizerConfig.from_flavor("tiny").save(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ImageTokenizer.from_pretrained(tmp_path)


# ---- training --------------------------------------------------------------------------------------------------
def test_training_reduces_reconstruction_error_and_uses_the_codebook(trained) -> None:
    _, before, after, out = trained
    assert after["mse"] < 0.1 * before["mse"], (before, after)
    assert after["psnr"] > 20
    assert after["codebook_usage"] > 0.15, after  # without restarts a few codes would cover every patch
    assert after["perplexity"] > 16
    for name in ("config.json", "model.safetensors", "eval_metrics.json", "run_config.yaml", "reconstructions.png"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").iterdir())
    assert load_run_config(out / "run_config.yaml").training.out_dir == str(out)  # the run can be repeated
    with Image.open(out / "reconstructions.png") as grid:
        assert grid.size == (4 * 114 + 2, 2 * 112 + 6)


def test_evaluation_holds_out_the_same_pages_every_time(page_folder: Path) -> None:
    source = image_source(DataConfig(images=str(page_folder), eval_fraction=0.15))
    keys = [Path(item).stem for item in source.items]
    held_out = [key for key in keys if is_held_out(key, 0.15)]
    assert 0 < len(held_out) < len(keys) / 3
    assert held_out == [key for key in keys if is_held_out(key, 0.15)]


def test_shards_yield_tok_png_and_skip_bad_samples(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    buffer = io.BytesIO()
    Image.new("L", (112, 112), 200).save(buffer, format="PNG")
    with wds.TarWriter(str(tmp_path / "train-000000.tar")) as sink:
        sink.write({"__key__": "good_p00000", "tok.png": buffer.getvalue(), "meta.json": b"{}"})
        sink.write({"__key__": "nopng_p00000", "meta.json": b"{}"})
        sink.write({"__key__": "broken_p00000", "tok.png": b"not a png"})
    source = image_source(DataConfig(shards=str(tmp_path)))
    with caplog.at_level(logging.WARNING):
        pages = list(source.read(source.items, 112, lambda key: True))
    assert [key for key, _ in pages] == ["good_p00000"]
    assert pages[0][1].shape == (112, 112, 3) and pages[0][1].dtype == np.uint8 and (pages[0][1] == 200).all()
    assert "nopng_p00000" in caplog.text and "broken_p00000" in caplog.text
    assert isinstance(source, ImageSource) and source.kind == "shards"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` 1-bit pixels: Pillow refuses it on opening, before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_skipped_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    Image.new("L", (64, 80), 255).save(tmp_path / "page.png")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(40_000, 40_000))  # 1.6 G pixels > Pillow's 179 M limit
    source = image_source(DataConfig(images=str(tmp_path)))
    with caplog.at_level(logging.WARNING):
        pages = list(source.read(source.items, 112, lambda key: True))
    assert [key for key, _ in pages] == ["page"]
    assert f"skipping image {tmp_path / 'bomb.png'}: too large to decode safely (DecompressionBombError" in caplog.text


# ---- configs and command line -------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "codes"), [("tiny", 512), ("base", 8192)])
def test_shipped_configs_load_and_validate(name: str, codes: int) -> None:
    config = load_run_config(REPO_ROOT / "configs" / "image_tokenizer" / f"{name}.yaml")
    assert config.model.codebook_size == codes and config.model.num_tokens == 196


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"trainig": {}}, "unknown top-level keys"),
        ({"training": {"stpes": 3}}, r"unknown key\(s\) in training: \['stpes'\]"),
        ({"model": {"flavor": "tiny", "codebook": 3}}, r"unknown model keys \['codebook'\]"),
        ({"model": {"flavor": "tiny", "codebook_size": "big"}}, "model.codebook_size: expected int, got 'big'"),
        ({"training": {"learning_rate": "fast"}}, "training.learning_rate: expected a number, got 'fast'"),
        ({"training": {"steps": 1.5}}, "training.steps: expected int, got 1.5"),
        ({"training": {"lr_schedule": "linear"}}, "lr_schedule"),
        ({"data": {"images": "a", "shards": "b"}}, "exactly one"),
        ({"data": {"synthetic_pages": 0}}, "exactly one"),
    ],
)
def test_bad_run_configs_raise(values: dict, message: str) -> None:
    values = {"data": {"synthetic_pages": 4}, **values}
    with pytest.raises(ValueError, match=message):
        run_config_from_dict(values)


def test_launch_script_trains_from_an_image_folder(page_folder: Path, tmp_path: Path) -> None:
    config = REPO_ROOT / "configs" / "image_tokenizer" / "tiny.yaml"
    args = ["--config", str(config), "--images", str(page_folder), "--out", str(tmp_path), "--steps", "3", "--quiet"]
    runpy.run_path(str(REPO_ROOT / "launch" / "train_image_tokenizer.py"))["main"](args)
    model = ImageTokenizer.from_pretrained(tmp_path)
    assert model.codebook_size == 512
    metrics = (tmp_path / "eval_metrics.json").read_text()
    assert '"step": 3' in metrics and math.isfinite(float(metrics.split('"psnr": ')[1].split(",")[0]))


def test_launch_script_writes_synthetic_pages_to_a_folder_first(tmp_path: Path) -> None:
    """The library reads pages; synthetic ones are made by data_prep, through the launcher, once."""
    values = yaml.safe_load((REPO_ROOT / "configs" / "image_tokenizer" / "tiny.yaml").read_text())
    values["data"]["synthetic_pages"] = 6
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(values))
    args = ["--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--steps", "2", "--quiet"]
    runpy.run_path(str(REPO_ROOT / "launch" / "train_image_tokenizer.py"))["main"](args)
    seed = values["data"]["synthetic_seed"]
    written = sorted(path.name for path in (tmp_path / "run" / "synthetic_pages").iterdir())
    assert written == sorted(f"{page_id(seed, index)}.png" for index in range(6))
    assert ImageTokenizer.from_pretrained(tmp_path / "run").codebook_size == 512
    with pytest.raises(ValueError, match="synthetic pages are made by data_prep"):
        image_source(DataConfig(synthetic_pages=6))
