"""Round 4 of attacks on the newest surfaces: the OCR settings (pages resampled for Tesseract), the file list and
its writer's report, and transformers' Trainer saving our models. Each test is a hole found and closed."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from PIL import Image, TiffImagePlugin

from data_prep.ocr import TesseractOcr
from data_prep.ocr_settings import OcrSettings, prepare_page, tesseract_dpi
from data_prep.pages import read_pages
from layoutlmv3 import page_sources

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")


def test_an_upscaled_page_stays_under_the_pixel_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page under the cap, upscaled to --ocr-min-dpi, must not become one over it (a 20000 x 4000 page of 100 dpi
    read at 300 would be 720 M pixels): the scale is lowered to what the cap allows, the dpi told follows it."""
    monkeypatch.setattr(page_sources, "MAX_PAGE_PIXELS", 100_000)
    page = Image.new("L", (400, 200), 255)
    page.info["dpi"] = (100, 100)
    seen = prepare_page(page, OcrSettings(min_dpi=300, max_dpi=0))
    assert seen.width * seen.height <= 100_000
    assert seen.width > 400 and abs(seen.width / seen.height - 2) < 0.02  # still upscaled, as far as allowed
    assert seen.info["dpi"][0] == round(100 * seen.width / 400)
    square = Image.new("L", (300, 300), 255)  # no dpi recorded: estimated 27, upscaled 44x to 1200 without the cap
    seen = prepare_page(square, OcrSettings(min_dpi=1200, max_dpi=0))
    assert seen.width * seen.height <= 100_000 and seen.width > 300


def test_a_page_over_the_cap_is_never_upscaled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_sources, "MAX_PAGE_PIXELS", 10_000)
    page = Image.new("L", (200, 100), 255)
    page.info["dpi"] = (100, 100)
    assert prepare_page(page, OcrSettings(min_dpi=300, max_dpi=0)) is page


@pytest.mark.parametrize(
    ("dpi", "told"),
    [
        ((300, 300), 300),
        ((72.4, 72.4), 72),
        ((float("nan"), float("nan")), None),  # a TIFF whose resolution is 1/0
        ((float("inf"), 300), None),
        ((-300, -300), None),
        ((1e30, 1e30), None),  # would overflow Tesseract's int
        ((30, 30), None),
        (("300", "300"), 300),
        ((300,), 300),
        ((), None),
        ("300", None),  # not a pair
    ],
)
def test_the_resolution_told_to_tesseract(dpi: object, told: int | None) -> None:
    page = Image.new("L", (10, 10))
    page.info["dpi"] = dpi
    assert tesseract_dpi(page) == told


def _nan_dpi_tiff(path: Path) -> Path:
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[282] = tags[283] = TiffImagePlugin.IFDRational(1, 0)  # XResolution, YResolution: 1/0
    tags[296] = 2  # inches
    Image.new("L", (200, 100), 255).save(path, tiffinfo=tags)
    return path


@needs_tesseract
@pytest.mark.parametrize("engine", ["cli", "api"])
def test_a_page_whose_file_records_a_nan_resolution_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    """Pillow reads a TIFF resolution of 1/0 as NaN; telling it to Tesseract was a ValueError (an internal error
    for the page) in both engines."""
    if engine == "api":
        pytest.importorskip("tesserocr")
    monkeypatch.setenv("LAYOUTLMV3_OCR_ENGINE", engine)
    path = _nan_dpi_tiff(tmp_path / "nan.tif")
    ((_, page),) = list(read_pages(path))
    assert math.isnan(page.info["dpi"][0])
    assert TesseractOcr(60.0).read(path, 0, page) == []  # a blank page: no words, and no error


@pytest.mark.slow
def test_a_masked_lm_resumes_from_its_trainer_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The pretraining model leaves its tied decoder out of saved files; transformers' Trainer, resuming, read the
    missing key as a transformers model's `_keys_to_ignore_on_save` and crashed (AttributeError) on our plain
    module. The resumed run takes every weight from the checkpoint, tie kept; a weight truly missing is warned of."""
    import torch
    from torch.nn.modules.module import _IncompatibleKeys

    from layoutlmv3.model import LayoutLMv3ForMaskedLM
    from tests.hf_trainer_runs import run_trainer, tiny_config
    from tests.model_inputs import random_inputs

    inputs = random_inputs(batch=2, length=48, vocab_size=300, seed=9)
    torch.manual_seed(0)
    model = LayoutLMv3ForMaskedLM(tiny_config())
    run_trainer(model, tmp_path / "run", save_strategy="steps", save_steps=1)
    torch.manual_seed(1)
    fresh = LayoutLMv3ForMaskedLM(tiny_config())
    resumed = run_trainer(fresh, tmp_path / "run", save_strategy="no")
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert fresh.mlm_head.decoder.weight is fresh.layoutlmv3.text_embeddings.word.weight
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(**inputs).logits, model.eval()(**inputs).logits, atol=1e-6, rtol=0)
    with caplog.at_level("WARNING"):
        resumed._issue_warnings_after_load(_IncompatibleKeys(["mlm_head.decoder.weight", "mlm_head.dense.weight"], []))
    assert "mlm_head.dense.weight" in caplog.text and "mlm_head.decoder.weight" not in caplog.text


def test_the_writer_reports_a_name_it_leaves_out_on_one_printable_line(tmp_path: Path) -> None:
    """A file name may hold a line break or a terminal escape: the list leaves it out, and the warning that says
    so (one line, the example as escaped text) must neither break in two nor drive the terminal."""
    from data_prep.file_list import UNLISTABLE, write_file_list

    root = tmp_path / "in"
    root.mkdir()
    Image.new("L", (8, 8)).save(root / "page.png")
    (root / "evil\n\x1b]0;owned\x07.png").write_bytes((root / "page.png").read_bytes())
    scan, _ = write_file_list(root, tmp_path / "list.txt")
    note = scan.skipped_note()
    assert UNLISTABLE in note and "evil\\n\\x1b]0;owned\\x07.png" in note
    assert note.isprintable()
    assert (tmp_path / "list.txt").read_text() == "page.png\n"


FAKE_SBATCH = """#!/bin/bash
count=$(ls "$CALLS" | wc -l)
printf '%s\\0' "$@" > "$CALLS/$count"
echo "$((100 + count))"
"""
FAKE_PYTHON = """#!/bin/sh
printf '%s\\0' "$(pwd)" > "$CALLS/ran"
printf '%s\\0' "$@" >> "$CALLS/ran"
"""


def _fake_sbatch(tmp_path: Path, locale: str) -> tuple[Path, dict[str, str]]:
    """A fake sbatch and python on PATH that record each call's arguments under the returned folder; the
    environment the Slurm scripts run in."""
    import os

    calls, tools = tmp_path / "calls", tmp_path / "bin"
    calls.mkdir()
    tools.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("python", FAKE_PYTHON)):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "CALLS": str(calls), "LC_ALL": locale}
    env |= {"PYTHON": str(tools / "python"), "LOG_DIR": str(tmp_path / "logs"), "REPO_DIR": str(tmp_path)}
    return calls, env


def _submit_prep(tmp_path: Path, build_args: list[str], locale: str = "C") -> list[list[str]]:
    """slurm/submit_prep.sh run against a fake sbatch: the argument lists of its submissions, in order."""
    import subprocess

    calls, env = _fake_sbatch(tmp_path, locale)
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([repo / "slurm" / "submit_prep.sh", "--array=0-1", "--", *build_args], env=env, check=True,
                   capture_output=True, cwd=repo)  # fmt: skip
    return [(calls / str(number)).read_bytes().decode().split("\0")[:-1] for number in range(2)]


def _run_wrapped(tmp_path: Path, sbatch_args: list[str]) -> list[str]:
    """What a --wrap command runs, as sbatch runs it (/bin/sh): the directory, then the arguments."""
    import os
    import subprocess

    wrap = next(arg.removeprefix("--wrap=") for arg in sbatch_args if arg.startswith("--wrap"))
    if wrap == "--wrap":
        wrap = sbatch_args[sbatch_args.index("--wrap") + 1]
    subprocess.run(["/bin/sh", "-c", wrap], env={**os.environ, "CALLS": str(tmp_path / "calls")}, check=True)
    return (tmp_path / "calls" / "ran").read_bytes().decode().split("\0")[:-1]


def test_submit_prep_list_job_quotes_for_sh_in_any_locale(tmp_path: Path) -> None:
    """The list job runs under sbatch --wrap, a /bin/sh script: bash's %q quoting wrote $'...' for a non-ASCII
    path in the C locale (and for any control character), which dash reads as literal text."""
    pages = tmp_path / "scans café" / "it's"
    out = tmp_path / "out dir"
    list_job, array = _submit_prep(tmp_path, ["--input", str(pages), "--out", str(out), "--ocr", "tesseract"])
    ran = _run_wrapped(tmp_path, list_job)
    assert ran == [str(tmp_path), "-m", "data_prep.file_list", "--input", str(pages), "--out", f"{out}/file-list.txt"]
    assert array[-2:] == ["--file-list", f"{out}/file-list.txt"]


def test_submit_prep_reads_a_repeated_option_as_build_shards_does(tmp_path: Path) -> None:
    """argparse takes the last of a repeated --input/--out; the list job must list that input, not the first."""
    args = ["--input", "/data/old", "--out", "/shards/old", "--input=/data/new", "--out", "/shards/new"]
    list_job, array = _submit_prep(tmp_path, args)
    ran = _run_wrapped(tmp_path, list_job)
    assert ran[-4:] == ["--input", "/data/new", "--out", "/shards/new/file-list.txt"]
    assert array[-2:] == ["--file-list", "/shards/new/file-list.txt"]


@needs_tesseract
@pytest.mark.parametrize("mode", ["P", "CMYK", "LA", "RGBA"])
def test_both_engines_read_a_page_of_any_mode_alike(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """TesseractOcr.read takes any image (the OCR benchmark and other callers hand it pages as Pillow opens them):
    the command wrote PNM, which Pillow cannot write for "P", "CMYK" or "LA" (OSError), while the in-process
    engine converted them; both now give Tesseract the same pixels."""
    from PIL import ImageDraw, ImageFont

    page = Image.new("RGB", (400, 120), "white")
    ImageDraw.Draw(page).text((60, 40), "INVOICE", font=ImageFont.load_default(size=28), fill="black")
    page = page.convert(mode)
    words = {}
    for engine in ("cli", "api"):
        monkeypatch.setenv("LAYOUTLMV3_OCR_ENGINE", engine)
        words[engine] = TesseractOcr(60.0).read(Path("page.png"), 0, page)
    assert [word.text for word in words["cli"]] == ["INVOICE"] and words["cli"] == words["api"]


@pytest.mark.slow
def test_the_trainer_saves_our_processor_as_its_tokenizer_and_windows(tmp_path: Path) -> None:
    """transformers' Trainer takes a processor as `processing_class` and saves it with every checkpoint; ours has no
    save_pretrained, so the first save after training was an AttributeError. Its tokenizer and windows are saved,
    where a predictor reads them."""
    import transformers

    from layoutlmv3.hf_trainer import LayoutLMv3Trainer
    from layoutlmv3.model import LayoutLMv3ForTokenClassification
    from layoutlmv3.processing import LayoutLMv3Processor, processing_settings
    from layoutlmv3.tokenizer import LayoutLMv3Tokenizer, train_bpe
    from tests.hf_trainer_runs import WORDS, tiny_config

    tokenizer = train_bpe(WORDS * 20, vocab_size=300)
    processor = LayoutLMv3Processor(tokenizer, max_length=64, stride=16)
    arguments = transformers.TrainingArguments(output_dir=str(tmp_path / "run"), report_to=[], use_cpu=True)
    model = LayoutLMv3ForTokenClassification(tiny_config(num_labels=3))
    LayoutLMv3Trainer(model=model, args=arguments, processing_class=processor).save_model(tmp_path / "saved")
    reloaded = LayoutLMv3Tokenizer.from_pretrained(tmp_path / "saved")
    assert reloaded.fingerprint == tokenizer.fingerprint
    assert processing_settings(tmp_path / "saved") == {"max_length": 64, "stride": 16, "boxes": "segment"}


def test_prep_sbatch_merge_job_quotes_for_sh_in_any_locale(tmp_path: Path) -> None:
    """The first task of the array submits the merge as sbatch --wrap (a /bin/sh script), quoted as the list job is:
    %q wrote $'...' for a non-ASCII --out in the C locale, and the merge after the whole build failed."""
    import subprocess

    calls, env = _fake_sbatch(tmp_path, "C")
    out = tmp_path / "shards é" / "it's"
    env |= {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_JOB_ID": "41"}
    script = Path(__file__).resolve().parent.parent / "slurm" / "prep.sbatch"
    subprocess.run(["bash", script, "--input", "/data", "--out", str(out)], env=env, check=True, capture_output=True)
    merge = (calls / "0").read_bytes().decode().split("\0")[:-1]
    ran = _run_wrapped(tmp_path, merge)
    assert ran == [str(tmp_path), "-m", "data_prep.merge_manifests", "--out", str(out)]


def test_the_walk_follows_a_linked_folder_as_the_list_does(tmp_path: Path) -> None:
    """README: links you place in a data folder are followed (datasets are assembled from links to other disks).
    The walk (Path.rglob on Python < 3.13) went silently past a link to a folder, while a list naming a page inside
    it was read: the pages of a linked disk were left out without a word, and the list and the walk disagreed. A
    link back to a folder it is inside of is not walked again (reported), so the walk ends."""
    from data_prep.file_list import read_file_list, write_file_list
    from data_prep.pages import scan_folder

    disk = tmp_path / "disk1"
    (disk / "batch").mkdir(parents=True)
    Image.new("L", (8, 8)).save(disk / "batch" / "x.png")
    root = tmp_path / "in"
    (root / "own").mkdir(parents=True)
    Image.new("L", (8, 8)).save(root / "own" / "a.png")
    (root / "disk1").symlink_to(disk)
    (root / "own" / "loop").symlink_to(root)  # back to the root: would be walked forever
    scan = scan_folder(root)
    assert scan.pages == ["disk1/batch/x.png", "own/a.png"]
    assert "own/loop" in scan.skipped_note()
    write_file_list(root, tmp_path / "list.txt")
    assert read_file_list(tmp_path / "list.txt").pages == scan.pages
