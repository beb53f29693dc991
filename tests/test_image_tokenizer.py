"""Tests for the VQ-VAE image tokenizer of masked image modeling and its training loop (CPU, tiny sizes)."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import socket
import struct
import subprocess
import sys
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
from launch.train_image_tokenizer import main as train_main
from layoutlmv3.pretraining.image_tokenizer import (
    ImageTokenizer,
    ImageTokenizerConfig,
    VectorQuantizer,
    VisualTokenizer,
)
from layoutlmv3.pretraining.image_tokenizer_data import (
    DataConfig,
    ImageSource,
    PageBatches,
    evaluate,
    held_out_images,
    image_source,
    is_held_out,
)
from layoutlmv3.pretraining.image_tokenizer_job import load_image_tokenizer_config

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
    """A tiny tokenizer trained 300 steps by the launcher (the DeepSpeed trainer, one process); (model, metrics
    before, metrics after, output directory)."""
    out = tmp_path_factory.mktemp("run")
    config = REPO_ROOT / "configs" / "image_tokenizer" / "tiny.yaml"
    arguments = ["--config", str(config), "--images", str(page_folder), "--out", str(out), "--steps", "300"]
    arguments += ["--quiet", "--data.eval_fraction", "0.15", "--data.eval_images", "16", "--train.warmup_ratio"]
    arguments += ["0.067", "--output.grid_images", "4", "--logging.val_every", "1000"]
    # One thread: on a busy 2-core machine, 2 threads ran these small convolutions ~5x slower.
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "launch.train_image_tokenizer", *arguments],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data = DataConfig(images=str(page_folder), eval_fraction=0.15, eval_images=16)
    eval_images = held_out_images(image_source(data), data, 112)
    torch.manual_seed(0)
    before = evaluate(ImageTokenizer(ImageTokenizerConfig.from_flavor("tiny")), eval_images, 16, "fp32")
    after = json.loads((out / "eval_metrics.json").read_text())
    assert after.pop("step") == 300
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_a_tokenizer_directory_s_config_is_read_as_data(tmp_path: Path) -> None:
    """config.json is read like every model directory's JSON: NaN, a non-object and a FIFO are named errors, not a
    config with a NaN weight, an AttributeError, nor a reader blocked for ever."""
    config_file = tmp_path / "config.json"
    ImageTokenizerConfig.from_flavor("tiny").save(config_file)
    text = config_file.read_text()
    config_file.write_text(text.replace('"commitment_weight": 0.25', '"commitment_weight": NaN'))
    with pytest.raises(ValueError, match="config.json is not valid JSON: NaN"):
        ImageTokenizerConfig.load(config_file)
    config_file.write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json: expected a JSON object"):
        ImageTokenizerConfig.load(config_file)
    config_file.unlink()
    os.mkfifo(config_file)
    with pytest.raises(ValueError, match="FIFO"):
        ImageTokenizerConfig.load(config_file)


# ---- training --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_reduces_reconstruction_error_and_uses_the_codebook(trained) -> None:
    _, before, after, out = trained
    assert after["mse"] < 0.1 * before["mse"], (before, after)
    assert after["psnr"] > 20
    assert after["codebook_usage"] > 0.15, after  # without restarts a few codes would cover every patch
    assert after["perplexity"] > 16
    for name in ("config.json", "model.safetensors", "eval_metrics.json", "run_config.yaml", "reconstructions.png"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*")) and (out / "metrics.jsonl").is_file()
    assert load_image_tokenizer_config(out / "run_config.yaml").output.dir == str(out)  # the run can be repeated
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
    source = image_source(DataConfig(shards=str(tmp_path / "train-{000000..000000}.tar")))
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
    (tmp_path / "big.png").write_bytes(_png_header_only(12_000, 12_000))  # 144 M: Pillow only warns; over the cap
    source = image_source(DataConfig(images=str(tmp_path)))
    with caplog.at_level(logging.WARNING):
        pages = list(source.read(source.items, 112, lambda key: True))
    assert [key for key, _ in pages] == ["page"]
    assert f"skipping image {tmp_path / 'bomb.png'}: too large to decode safely (PageTooLarge" in caplog.text
    assert f"skipping image {tmp_path / 'big.png'}: too large to decode safely (PageTooLarge" in caplog.text
    assert "a 12000x12000 page (144.0 M pixels) is over the cap of 89.5 M pixels" in caplog.text


# ---- configs and command line -------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "codes"), [("tiny", 512), ("base", 8192)])
def test_shipped_configs_load_and_validate(name: str, codes: int) -> None:
    config = load_image_tokenizer_config(REPO_ROOT / "configs" / "image_tokenizer" / f"{name}.yaml")
    assert config.model.build().codebook_size == codes and config.model.build().num_tokens == 196
    assert config.checkpoint.dir == str(Path(config.output.dir) / "checkpoints")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--trainig.steps", "3"], r"unknown key\(s\) in config: \['trainig'\]"),
        (["--train.stpes", "3"], r"unknown key\(s\) in config.train: \['stpes'\]"),
        (["--model.overrides", "{codebook: 3}"], "codebook"),
        (["--model.flavor", "huge"], "unknown image tokenizer flavor"),
        (["--train.lr", "fast"], "train.lr"),
        (["--train.steps", "1.5"], "train.steps"),
        (["--train.decay", "step"], "train.decay must be one of"),
        (["--train.autocast", "fp16"], "train.autocast must be one of"),
        (["--data.images", "a", "--data.shards", "b"], "exactly one"),
        (["--data.synthetic_pages", "0"], "exactly one"),
    ],
)
def test_bad_run_configs_raise(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_image_tokenizer_config(REPO_ROOT / "configs" / "image_tokenizer" / "tiny.yaml", overrides)


def test_a_16_bit_engine_is_refused(page_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """bf16 in the DeepSpeed JSON would cast the codebook statistics; the job says what to use instead."""
    config = REPO_ROOT / "configs" / "image_tokenizer" / "tiny.yaml"
    arguments = ["--config", str(config), "--images", str(page_folder), "--out", str(tmp_path)]
    assert train_main([*arguments, "--deepspeed", "ds_configs/zero2_bf16.json"]) == 2
    assert "train.autocast: bf16" in caplog.text


def test_an_out_that_is_a_file_is_named_as_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = REPO_ROOT / "configs" / "image_tokenizer" / "tiny.yaml"
    (tmp_path / "afile").write_text("x")
    assert train_main(["--config", str(config), "--out", str(tmp_path / "afile")]) == 2
    assert f"error: --out {tmp_path / 'afile'} is a file, not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_launch_script_trains_from_an_image_folder(page_folder: Path, tmp_path: Path) -> None:
    config = REPO_ROOT / "configs" / "image_tokenizer" / "tiny.yaml"
    args = ["--config", str(config), "--images", str(page_folder), "--out", str(tmp_path), "--steps", "3", "--quiet"]
    assert _launch(args) == 0
    model = ImageTokenizer.from_pretrained(tmp_path)
    assert model.codebook_size == 512
    metrics = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert metrics["step"] == 3 and math.isfinite(metrics["psnr"])


def _launch(arguments: list[str], ranks: int = 1) -> int:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    if ranks == 1:
        command = [sys.executable, "-m", "launch.train_image_tokenizer", *arguments]
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port"]
        command += [str(port), "launch/train_image_tokenizer.py", *arguments]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, timeout=600).returncode


@pytest.mark.slow
def test_launch_script_writes_synthetic_pages_to_a_folder_first_and_trains_on_two_ranks(tmp_path: Path) -> None:
    """The library reads pages; synthetic ones are made by data_prep, through the launcher, once (by the first
    of the ranks). Two ranks train the same codebook (the quantiser all-reduces its statistics)."""
    values = yaml.safe_load((REPO_ROOT / "configs" / "image_tokenizer" / "tiny.yaml").read_text())
    values["data"]["synthetic_pages"] = 6
    values["train"]["global_batch_size"] = 4
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(values))
    args = ["--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--steps", "2", "--quiet"]
    assert _launch([*args, "--deepspeed", str(tmp_path / "ds.json")], ranks=2) == 2  # no such JSON: refused
    ds = json.loads((REPO_ROOT / "ds_configs" / "image_tokenizer_fp32.json").read_text())
    (tmp_path / "ds.json").write_text(json.dumps({**ds, "train_micro_batch_size_per_gpu": 2}))
    assert _launch([*args, "--deepspeed", str(tmp_path / "ds.json")], ranks=2) == 0
    seed = values["data"]["synthetic_seed"]
    written = sorted(path.name for path in (tmp_path / "run" / "synthetic_pages").glob("*.png"))
    assert written == sorted(f"{page_id(seed, index)}.png" for index in range(6))
    assert ImageTokenizer.from_pretrained(tmp_path / "run").codebook_size == 512
    with pytest.raises(ValueError, match="synthetic pages are made by data_prep"):
        image_source(DataConfig(synthetic_pages=6))


_QUANTIZER_SCRIPT = """
import sys, torch, torch.distributed as dist
from layoutlmv3.pretraining.image_tokenizer import ImageTokenizerConfig, VectorQuantizer
rank, port, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.manual_seed(rank)  # without rank 0's broadcast, restarts would pick different vectors on each rank
quantizer = VectorQuantizer(ImageTokenizerConfig.from_flavor("tiny", codebook_size=16, code_dim=4))
start = torch.load(f"{folder}/start.pt")
quantizer.load_state_dict(start["state"])
quantizer.threshold = start["threshold"]
for step in range(3):
    quantizer(start["vectors"][step, rank], update=True)
torch.save(quantizer.state_dict(), f"{folder}/rank{rank}.pt")
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_two_ranks_keep_one_codebook(threshold: float, tmp_path: Path) -> None:
    """Each of two ranks quantises its half of every batch: both end with the same codebook (statistics
    all-reduced, restarts broadcast from rank 0); without dead codes (threshold 0) it is the codebook one
    process gets from the whole batches."""
    config = ImageTokenizerConfig.from_flavor("tiny", codebook_size=16, code_dim=4)
    torch.manual_seed(0)
    start = VectorQuantizer(config).state_dict()
    vectors = torch.randn(3, 2, 40, 4)
    torch.save({"state": start, "threshold": threshold, "vectors": vectors}, tmp_path / "start.pt")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    ranks = [
        subprocess.Popen([sys.executable, "-c", _QUANTIZER_SCRIPT, str(rank), port, str(tmp_path)], cwd=REPO_ROOT)
        for rank in range(2)
    ]
    assert [process.wait(timeout=120) for process in ranks] == [0, 0]
    states = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])
    whole = VectorQuantizer(config)
    whole.load_state_dict(start)
    whole.threshold = threshold
    for step in range(3):
        whole(vectors[step].reshape(-1, 4), update=True)
    if threshold == 0.0:
        for name, tensor in whole.state_dict().items():
            torch.testing.assert_close(states[0][name], tensor, atol=1e-6, rtol=1e-5)
    else:  # codes died and were restarted (else this case tests nothing new)
        assert not torch.allclose(states[0]["codebook"], whole.state_dict()["codebook"])


def test_a_resumed_page_stream_continues_with_the_same_batches(page_folder: Path) -> None:
    """The position (epoch, entries consumed) restores the stream exactly, across an epoch end, on each rank."""
    data = DataConfig(images=str(page_folder), eval_fraction=0.15, shuffle_buffer=8, num_workers=2)
    source = image_source(data)

    def stream(rank: int) -> PageBatches:
        return PageBatches(source, data, 112, 4, rank=rank, world_size=2, seed=5)

    for rank in range(2):
        whole = stream(rank)
        expected = [batch for _ in range(3) for batch in whole][:14]
        first = stream(rank)
        taken = []
        for batch in first:  # 5 batches into the first epoch
            taken.append(batch)
            if len(taken) == 5:
                break
        resumed = stream(rank)
        resumed.load_state_dict(first.state_dict())
        taken += [batch for _ in range(3) for batch in resumed][: 14 - 5]
        assert len(expected) == 14 and all(torch.equal(a, b) for a, b in zip(taken, expected, strict=True))
    other = [next(iter(stream(rank))) for rank in range(2)]
    assert not torch.equal(other[0], other[1])  # the ranks read different pages
    with pytest.raises(ValueError, match="saved on 2 ranks"):
        PageBatches(source, data, 112, 4, rank=0, world_size=1, seed=5).load_state_dict(first.state_dict())


def test_a_non_finite_batch_leaves_the_codebook_alone() -> None:
    """The trainer skips a micro-batch whose loss is not finite; the codebook update inside the forward pass
    must not have taken it in first (nor crash drawing restarts from it)."""
    quantizer = VectorQuantizer(ImageTokenizerConfig.from_flavor("tiny", codebook_size=16, code_dim=4))
    before = {name: tensor.clone() for name, tensor in quantizer.state_dict().items()}
    vectors = torch.randn(40, 4)
    vectors[3, 1] = float("inf")
    quantizer(vectors, update=True)
    assert all(torch.equal(before[name], tensor) for name, tensor in quantizer.state_dict().items())


def test_command_line_paths_stay_strings_and_old_configs_are_pointed_at_the_new_keys(tmp_path: Path) -> None:
    from launch.train_image_tokenizer import build_parser, command_line_overrides

    config = REPO_ROOT / "configs" / "image_tokenizer" / "tiny.yaml"
    args = build_parser().parse_args(["--config", str(config), "--out", "2024", "--shards", "a-{000..001}.tar"])
    loaded = load_image_tokenizer_config(config, command_line_overrides(args))
    assert (loaded.output.dir, loaded.data.shards, loaded.data.images) == ("2024", "a-{000..001}.tar", None)
    (tmp_path / "old.yaml").write_text("data: {synthetic_pages: 4}\ntraining: {learning_rate: 0.1}\n")
    with pytest.raises(ValueError, match="learning_rate -> train.lr"):
        load_image_tokenizer_config(tmp_path / "old.yaml")


def test_unreadable_held_out_pages_are_not_blamed_on_the_split(tmp_path: Path) -> None:
    """Every page unreadable: the error points at the inputs (each skipped page is logged), not only at
    data.eval_fraction."""
    from layoutlmv3.pretraining.image_tokenizer_data import DataConfig, held_out_images, image_source

    for index in range(20):
        (tmp_path / f"{index}.png").write_bytes(b"not a picture")
    data = DataConfig(images=str(tmp_path), eval_fraction=0.5)
    with pytest.raises(ValueError, match="no readable held-out page among 20 folder items: if pages were skipped"):
        held_out_images(image_source(data), data, 32)
