"""Every path that opens a checkpoint verifies it first (`checkpointing.open_checkpoint` / `verify_checkpoint`):
resume, launch/convert.py and launch/probe_checkpoints.py (the sweep sbatch runs the probe). A planted pickle
never runs, a file changed in place (same size) or an unreadable `complete` record is a damaged checkpoint
(set aside, the previous one used; never a fresh start), and a checkpoint of another job is named as such.

The checkpoints are real: a tiny ZeRO-1 pretraining engine saved by `save_checkpoint` (steps 5 and 10), and one
step of the image-tokenizer and fine-tuning launchers."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep.synth import write_corpus
from launch.convert import main as convert_main
from launch.probe_checkpoints import main as probe_main
from layoutlmv3.checksums import file_digest
from layoutlmv3.model import LayoutLMv3Config, LayoutLMv3Model
from layoutlmv3.tokenizer import LayoutLMv3Tokenizer, train_bpe
from layoutlmv3.training.checkpointing import (
    ALLOW_GLOBALS_HOW,
    COMPLETE_FILE,
    MAX_RECORD_BYTES,
    Checkpoint,
    DamagedCheckpoint,
    _prune,
    read_checkpoint,
    resolve_resume,
    tag_for,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
VOCAB = 300
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
# One process, one rank: a tiny pretraining model under ZeRO-1 (optimizer state in *optim_states.pt), saved at
# steps 5 and 10 the way the training loop saves.
MAKE_CHECKPOINTS = """
import sys
import deepspeed, torch
from layoutlmv3.model import LayoutLMv3Config
from layoutlmv3.pretraining.model import LayoutLMv3ForPretraining
from layoutlmv3.training.checkpointing import save_checkpoint
root, tokenizer, fingerprint = sys.argv[1:4]
deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
config = LayoutLMv3Config.from_flavor("tiny", vocab_size=300, visual_codebook_size=32)
model = LayoutLMv3ForPretraining(config)
ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 1},
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
run = {"model": {"flavor": "tiny", "overrides": {}, "init_from": None}, "data": {"tokenizer": tokenizer}}
client = {"layoutlmv3": {"config": run, "tokenizer_fingerprint": fingerprint}}
record = {"model_config": config.to_dict(), "tokenizer_fingerprint": fingerprint, "model_class": type(model).__name__}
for step in (5, 10):
    save_checkpoint(engine, root, step, client, {"loader": {"epoch": 0}}, keep=2, record=record)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(command, env=env or ENV, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/pretrain (steps 5 and 10), its tokenizer in ROOT/vocab: all that most tests here need."""
    root = tmp_path_factory.mktemp("checkpoints")
    tokenizer = train_bpe(["Date", "Name", "Total", "Amount", "Signature"] * 5, vocab_size=VOCAB)
    tokenizer.save_pretrained(root / "vocab")
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "LOCAL_RANK": "0"}
    env["WORLD_SIZE"] = "1"
    _run([sys.executable, "-c", MAKE_CHECKPOINTS, str(root / "pretrain"), str(root / "vocab"), tokenizer.fingerprint],
         env)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def runs(pretrained: Path) -> Path:
    """ROOT/pretrain as above, ROOT/image_tokenizer and ROOT/finetune (each one step of its launcher:
    OUT/checkpoints/step00000001), forms in ROOT/forms."""
    root = pretrained
    arguments = ["--config", "configs/image_tokenizer/tiny.yaml", "--out", str(root / "image_tokenizer")]
    arguments += ["--steps", "1", "--quiet", "--data.synthetic_pages", "20", "--data.eval_images", "2"]
    _run([sys.executable, "-m", "launch.train_image_tokenizer", *arguments, "--output.grid_images", "2"])
    write_corpus(root / "forms" / "training_data", 2, seed=0)
    write_corpus(root / "forms" / "testing_data", 1, seed=1)
    tokenizer = LayoutLMv3Tokenizer.from_pretrained(root / "vocab")
    LayoutLMv3Model(LayoutLMv3Config.from_flavor("tiny", vocab_size=VOCAB)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    arguments = ["--config", "configs/finetune/tiny.yaml", "--model", str(root / "model"), "--data"]
    arguments += [str(root / "forms"), "--out", str(root / "finetune"), "--train.steps", "1"]
    _run(
        [sys.executable, "-m", "launch.finetune", *arguments, "--logging.val_every", "1", "--logging.progress", "false"]
    )
    return root


@pytest.fixture
def pretrain(pretrained: Path, tmp_path: Path) -> Path:
    """A copy of the pretraining checkpoint.dir (steps 5 and 10) this test may damage."""
    shutil.copytree(pretrained / "pretrain", tmp_path / "checkpoints", symlinks=True)
    return tmp_path / "checkpoints"


class _Planted:
    """Unpickling it creates `marker` (through builtins.open: no shell needed to show that code ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _probe_arguments(runs: Path, checkpoints: Path, out: Path) -> list[str]:
    arguments = ["--checkpoints", str(checkpoints), "--out", str(out), "--config", "configs/finetune/tiny.yaml"]
    return [*arguments, "--data", str(runs / "forms"), "--train.steps", "1", "--logging.progress", "false"]


def _flip_a_tensor_byte(path: Path) -> None:
    """Change one byte of the largest tensor's data in a torch zip file, in place: same size, the pickle intact."""
    with zipfile.ZipFile(path) as archive:
        member = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as handle:
        handle.seek(member.header_offset + 26)
        name_length, extra_length = int.from_bytes(handle.read(2), "little"), int.from_bytes(handle.read(2), "little")
        offset = member.header_offset + 30 + name_length + extra_length + member.file_size // 2
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.slow
def test_saves_record_each_files_checksum(runs: Path) -> None:
    for tag in (runs / "pretrain" / tag_for(10), runs / "image_tokenizer" / "checkpoints" / tag_for(1)):
        checkpoint = read_checkpoint(tag)
        assert checkpoint.files and set(checkpoint.digests) == set(checkpoint.files)
        assert any(name.endswith("optim_states.pt") for name in checkpoint.files) or "pretrain" not in str(tag)
        for name, digest in checkpoint.digests.items():
            assert file_digest(tag / name) == digest


@pytest.mark.slow
def test_a_planted_pickle_in_optim_states_is_refused_by_convert_and_probe(
    runs: Path, pretrain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DeepSpeed's zero-to-fp32 consolidation loads *optim_states.pt with weights_only=False: the pickle is scanned
    first, and the planted code never runs (exit 2, the file named)."""
    marker = tmp_path / "code-ran"
    planted = next((pretrain / tag_for(5)).glob("*optim_states.pt"))
    torch.save({"optimizer_state_dict": _Planted(marker)}, planted)
    argv = ["--checkpoint", str(pretrain), "--tag", tag_for(5), "--out", str(tmp_path / "model")]
    assert convert_main(argv) == 2
    err = capsys.readouterr().err
    assert f"refusing to load {planted}: its pickle would call io.open" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "model").exists()

    out = tmp_path / "probe"
    assert probe_main(_probe_arguments(runs, pretrain, out)) == 2  # step 5 first: refused, step 10 not probed
    assert f"refusing to load {planted}" in capsys.readouterr().err
    assert not marker.exists() and not (out / "finetune").exists()
    assert probe_main([*_probe_arguments(runs, pretrain, out), "--index", "0"]) == 2  # a sweep's array task
    assert f"refusing to load {planted}" in capsys.readouterr().err and not marker.exists()


@pytest.mark.slow
def test_a_byte_changed_in_place_is_set_aside_and_the_previous_checkpoint_resumed(
    pretrain: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same size, same pickle, other content: only the recorded checksum tells."""
    changed = pretrain / tag_for(10) / "mp_rank_00_model_states.pt"
    size = changed.stat().st_size
    _flip_a_tensor_byte(changed)
    assert changed.stat().st_size == size
    assert convert_main(["--checkpoint", str(pretrain), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert f"{changed} differs from the file saved" in err and "Traceback" not in err
    chosen = resolve_resume("auto", pretrain)
    assert chosen is not None and chosen.step == 5
    assert f"{changed} differs from the file saved" in caplog.text
    assert not (pretrain / tag_for(10)).exists() and len(list(pretrain.glob(f"{tag_for(10)}.damaged-*"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "record",
    [
        b"\x00\x17garbage",
        b'{"step": 10, "world_size": 1, "fi',  # cut short
        b"[10, 1]",
        b'{"step": "10", "world_size": 1}',
        b'{"world_size": 1}',
        b'{"step": 10, "world_size": 0}',
        b'{"step": 5, "world_size": 1}',  # another tag's step
        b'{"step": 10, "world_size": 1, "files": {"../../elsewhere.pt": 5}}',
        b'{"step": 10, "world_size": 1, "files": {"a.pt": 5}, "sha256": {"a.pt": "not hex"}}',
        b'{"step": 10, "world_size": 1, "files": [], "model_class": 3}',
    ],
)
def test_an_unreadable_or_wrong_shaped_record_is_a_damaged_checkpoint_never_a_fresh_start(
    pretrain: Path, tmp_path: Path, record: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = pretrain / tag_for(10) / COMPLETE_FILE
    marker.write_bytes(record)
    assert convert_main(["--checkpoint", str(pretrain / tag_for(10)), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert str(marker) in err and "Traceback" not in err
    chosen = resolve_resume("auto", pretrain)  # the previous checkpoint, the damaged one set aside
    assert chosen is not None and chosen.step == 5 and not (pretrain / tag_for(10)).exists()
    shutil.rmtree(pretrain / tag_for(5))
    shutil.copytree(next(pretrain.glob(f"{tag_for(10)}.damaged-*")), pretrain / tag_for(10))
    with pytest.raises(DamagedCheckpoint, match=re.escape(f"no checkpoint in {pretrain} verifies: {marker}")):
        resolve_resume("auto", pretrain)  # the only one: refused, not a start from step 0


@pytest.mark.slow
def test_a_probe_names_a_damaged_record_and_goes_on(
    runs: Path, pretrain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The probe lists tags by their `complete` file: a garbled one is named (exit 1), not silently left out."""
    (pretrain / tag_for(5) / COMPLETE_FILE).write_text("{")
    out = tmp_path / "probe"
    (out / "finetune" / tag_for(10)).mkdir(parents=True)  # step 10 already probed: no fine-tuning run needed
    (out / "finetune" / tag_for(10) / "results.json").write_text(json.dumps({"dev_f1": 0.5, "test": {"f1": 0.4}}))
    assert probe_main(_probe_arguments(runs, pretrain, out)) == 1
    assert f"{pretrain / tag_for(5) / COMPLETE_FILE} is not valid JSON" in caplog.text
    assert "not probed: step00000005" in capsys.readouterr().err


@pytest.mark.slow
def test_a_pt_file_added_after_the_save_is_damage(pretrain: Path, caplog: pytest.LogCaptureFixture) -> None:
    """DeepSpeed globs *optim_states.pt: another rank's file slipped in would be consolidated with the rest."""
    tag = pretrain / tag_for(10)
    shutil.copy(next(tag.glob("*optim_states.pt")), tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    assert resolve_resume("auto", pretrain).step == 5
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt was not written by the save" in caplog.text


@pytest.mark.slow
def test_a_fifo_among_the_pickles_is_damage_not_a_hang(pretrain: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(pretrain / tag_for(10) / "extra.pt")
    assert resolve_resume("auto", pretrain).step == 5
    assert "extra.pt is not a regular file" in caplog.text


@pytest.mark.slow
def test_records_written_before_checksums_or_sizes_still_resume(pretrain: Path) -> None:
    marker = pretrain / tag_for(10) / COMPLETE_FILE
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({key: value for key, value in record.items() if key != "sha256"}))
    assert resolve_resume("auto", pretrain).step == 10  # sizes only
    marker.write_text(json.dumps({"step": 10, "world_size": 1}))
    assert resolve_resume("auto", pretrain).step == 10  # neither


@pytest.mark.slow
@pytest.mark.parametrize(
    ("job", "says"),
    [
        ("image_tokenizer", "is an image-tokenizer checkpoint (ImageTokenizer), not a pretraining one: "
         "launch/train_image_tokenizer.py --out already wrote the tokenizer's weights"),
        ("finetune", "is a fine-tuning checkpoint (LayoutLMv3ForTokenClassification), not a pretraining one: the "
         "fine-tuning run's model directory (OUTPUT/best, here: {root}/finetune/best) is its output; use it "
         "directly with launch/predict.py"),
    ],
)  # fmt: skip
def test_a_checkpoint_of_another_job_is_named_with_what_to_do(
    runs: Path, tmp_path: Path, job: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoints = runs / job / "checkpoints"
    assert convert_main(["--checkpoint", str(checkpoints), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert f"error: {checkpoints / tag_for(1)} " + says.format(root=runs) in err and "Traceback" not in err
    out = tmp_path / "probe"
    assert probe_main(_probe_arguments(runs, checkpoints, out)) == 2
    err = capsys.readouterr().err
    assert says.format(root=runs) in err and "Traceback" not in err and not out.exists()


# JSON values of every shape, and records close to valid ones (a field dropped, retyped or out of range).
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_near_records = st.fixed_dictionaries(
    {},
    optional={
        "step": st.integers(-2, 12) | _json,
        "world_size": st.integers(-1, 3) | _json,
        "files": st.dictionaries(
            st.sampled_from(["a.pt", "../a.pt", "/etc/x", "", "b/./c", "d\\e"]), st.integers(-1, 9) | _json, max_size=3
        )
        | _json,  # fmt: skip
        "sha256": st.dictionaries(st.sampled_from(["a.pt", "z.pt"]), st.sampled_from(["0" * 64, "xyz"]) | _json)
        | _json,
        "model_config": _json,
        "tokenizer_fingerprint": _json,
        "model_class": _json,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=_json | _near_records, raw=st.binary(max_size=40), use_raw=st.booleans())
def test_any_complete_record_is_read_or_named_as_damaged(record: object, raw: bytes, use_raw: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        tag = Path(directory) / tag_for(10)
        tag.mkdir()
        (tag / COMPLETE_FILE).write_bytes(raw if use_raw else json.dumps(record).encode())
        try:
            checkpoint = read_checkpoint(tag)
        except DamagedCheckpoint as error:
            assert str(tag / COMPLETE_FILE) in str(error)
            return
        assert isinstance(checkpoint, Checkpoint) and checkpoint.step == 10 and checkpoint.world_size >= 1
        for name in checkpoint.files or {}:
            assert (tag / name).resolve().is_relative_to(tag.resolve())


# --- A checkpoint from elsewhere, attacked (issue 25, second pass): nothing is read through a link, nothing but
# pickles is loaded and nothing is run, every name read from the checkpoint is confined, every read is bounded.


def _record(tag: Path) -> dict:
    return json.loads((tag / COMPLETE_FILE).read_text())


def _rerecord(tag: Path, name: str) -> None:
    """Record file `name` of `tag` as it now is (a checkpoint prepared elsewhere, its record made to match)."""
    record = _record(tag)
    record["files"][name], record["sha256"][name] = (tag / name).stat().st_size, file_digest(tag / name)
    (tag / COMPLETE_FILE).write_text(json.dumps(record))


@pytest.mark.slow
def test_a_plain_data_type_outside_the_allow_list_is_allowed_by_the_user_never_by_the_checkpoint(
    pretrain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """convert.py and the probe read no run config: --allow-global is their checkpoint.allowed_globals, and the
    refusal names both (one sentence for every reader)."""
    tag = pretrain / tag_for(5)
    torch.save({"loader": {"epoch": 0}, "saved_on": datetime.date(2026, 1, 1)}, tag / "rank_state" / "rank00000.pt")
    _rerecord(tag, "rank_state/rank00000.pt")
    argv = ["--checkpoint", str(pretrain), "--tag", tag_for(5), "--out", str(tmp_path / "model")]
    assert convert_main(argv) == 2
    err = capsys.readouterr().err
    assert "its pickle would call datetime.date" in err and ALLOW_GLOBALS_HOW in err
    assert "--allow-global NAME (launch/convert.py, launch/probe_checkpoints.py)" in err
    assert convert_main([*argv, "--allow-global", "datetime.date"]) == 0
    assert (tmp_path / "model" / "config.json").is_file()

    probe = ["--checkpoints", str(pretrain), "--out", str(tmp_path / "probe"), "--index", "0"]
    probe += ["--config", "configs/finetune/tiny.yaml", "--data", str(tmp_path / "no-forms")]
    assert probe_main(probe) == 2
    assert "its pickle would call datetime.date" in capsys.readouterr().err
    assert not (tmp_path / "probe" / "models").exists()
    probe_main([*probe, "--allow-global", "datetime.date"])  # verified and converted; the fine-tune finds no forms
    assert (tmp_path / "probe" / "models" / tag_for(5) / "config.json").is_file()


def _link_planted_pickle(tag: Path, tmp_path: Path) -> str:
    outside = tmp_path / "outside.pt"
    torch.save({"optimizer_state_dict": _Planted(tmp_path / "code-ran")}, outside)
    optim = next(tag.glob("*optim_states.pt"))
    optim.unlink()
    optim.symlink_to(outside)
    return optim.name


def _link_etc_passwd_in_the_record(tag: Path, tmp_path: Path) -> str:
    (tag / "passwd").symlink_to("/etc/passwd")
    record = _record(tag)
    record["files"]["passwd"], record["sha256"]["passwd"] = os.path.getsize("/etc/passwd"), file_digest("/etc/passwd")
    (tag / COMPLETE_FILE).write_text(json.dumps(record))
    return "passwd"


def _link_a_folder(tag: Path, tmp_path: Path) -> str:
    """rank_state/ moved out and linked back, a planted pickle in it, recorded: a scan that does not enter linked
    folders passed it, and resuming loads rank states with weights_only=False."""
    shutil.move(tag / "rank_state", tmp_path / "rank_state")
    torch.save({"loader": _Planted(tmp_path / "code-ran")}, tmp_path / "rank_state" / "rank00000.pt")
    (tag / "rank_state").symlink_to(tmp_path / "rank_state")
    _rerecord(tag, "rank_state/rank00000.pt")
    return "rank_state"


def _link_the_record(tag: Path, tmp_path: Path) -> str:
    (tag / COMPLETE_FILE).rename(tmp_path / "record.json")
    (tag / COMPLETE_FILE).symlink_to(tmp_path / "record.json")
    return COMPLETE_FILE


@pytest.mark.slow
@pytest.mark.parametrize(
    "plant", [_link_planted_pickle, _link_etc_passwd_in_the_record, _link_a_folder, _link_the_record]
)
def test_nothing_is_read_through_a_link_in_a_tag(
    pretrain: Path, tmp_path: Path, plant, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = pretrain / tag_for(10)
    name = plant(tag, tmp_path)
    says = f"{tag / name} is a symbolic link (to "
    assert convert_main(["--checkpoint", str(pretrain), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert resolve_resume("auto", pretrain).step == 5 and says in caplog.text
    assert not (tmp_path / "code-ran").exists() and not tag.exists()
    assert len(list(pretrain.glob(f"{tag_for(10)}.damaged-*"))) == 1


@pytest.mark.slow
def test_a_tag_that_is_a_link_is_damage_and_pruning_never_follows_it(
    pretrain: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tag linked in from elsewhere: resuming sets the link aside (another directory's files are not this run's
    to resume, nor to delete); pruning did shutil.rmtree on it and every later save failed with OSError."""
    elsewhere = tmp_path / "elsewhere" / tag_for(5)
    elsewhere.parent.mkdir()
    shutil.move(pretrain / tag_for(5), elsewhere)
    (pretrain / tag_for(5)).symlink_to(elsewhere)
    _prune(pretrain, keep=1)
    assert f"{pretrain / tag_for(5)} is a symbolic link (to {elsewhere})" in caplog.text
    assert (elsewhere / COMPLETE_FILE).is_file() and (pretrain / tag_for(10)).is_dir()
    assert not os.path.lexists(pretrain / tag_for(5))
    assert [path.is_symlink() for path in pretrain.glob(f"{tag_for(5)}.damaged-*")] == [True]

    shutil.rmtree(pretrain / tag_for(10))
    (pretrain / tag_for(10)).symlink_to(elsewhere)  # the newest: resuming skips it, the other job's files stay
    with pytest.raises(DamagedCheckpoint, match="is a symbolic link"):
        resolve_resume("auto", pretrain)
    assert (elsewhere / COMPLETE_FILE).is_file()
    assert resolve_resume(str(tmp_path / "elsewhere" / tag_for(5)), tmp_path / "elsewhere").step == 5  # the user's


@pytest.mark.slow
def test_an_unreadable_record_older_than_the_newest_is_set_aside_once_by_pruning(
    pretrain: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It was left in checkpoint.dir with a warning at every save; set aside once, as resuming would."""
    (pretrain / tag_for(5) / COMPLETE_FILE).write_text("{")
    _prune(pretrain, keep=2)
    aside = [path.name for path in pretrain.glob(f"{tag_for(5)}.damaged-*")]
    assert len(aside) == 1 and re.fullmatch(rf"{tag_for(5)}\.damaged-\d{{8}}T\d{{6}}", aside[0])
    assert f"checkpoint {tag_for(5)} is damaged, moved to" in caplog.text and "is not valid JSON" in caplog.text
    caplog.clear()
    _prune(pretrain, keep=2)
    assert caplog.text == "" and (pretrain / tag_for(10)).is_dir()


@pytest.mark.slow
@pytest.mark.parametrize(
    "latest",
    [b"\x00\xffgarbage\n", b"step00000010" * 1000, b"../step00000010", b"/etc", b"step00000010/../../x", b""],
)
def test_a_latest_file_names_a_tag_or_is_refused(
    pretrain: Path, tmp_path: Path, latest: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    (pretrain / "latest").write_bytes(latest)
    assert convert_main(["--checkpoint", str(pretrain), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert f"error: {pretrain / 'latest'} names " in err and "not a checkpoint tag" in err
    assert f"complete tags: ['{tag_for(5)}', '{tag_for(10)}']" in err and "Traceback" not in err
    assert len(err) < 400


@pytest.mark.slow
def test_a_huge_record_is_damage_without_being_read(pretrain: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = pretrain / tag_for(10) / COMPLETE_FILE
    os.truncate(marker, 1 << 30)  # sparse: 1 GB of zeros on no disk
    started = time.process_time()
    with pytest.raises(DamagedCheckpoint, match=f"{re.escape(str(marker))} is larger than {MAX_RECORD_BYTES} bytes"):
        read_checkpoint(marker.parent)
    assert time.process_time() - started < 2
    assert resolve_resume("auto", pretrain).step == 5


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "device"])
def test_a_record_that_is_not_a_file_is_named_not_left_unseen(
    pretrain: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A `complete` folder or a link to /dev/zero made the tag an 'interrupted save': skipped without a word,
    and never pruned."""
    marker = pretrain / tag_for(10) / COMPLETE_FILE
    marker.unlink()
    marker.mkdir() if kind == "folder" else marker.symlink_to("/dev/zero")
    assert resolve_resume("auto", pretrain).step == 5
    assert f"{marker} is " in caplog.text and not (pretrain / tag_for(10)).exists()


@pytest.mark.slow
@pytest.mark.parametrize("recorded", ["mp_rank_00_model_states.pt", "rank_state/rank00000.pt"])
def test_a_recorded_file_that_is_a_folder_is_damage(
    pretrain: Path, recorded: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = pretrain / tag_for(10) / recorded
    path.unlink()
    path.mkdir()
    assert resolve_resume("auto", pretrain).step == 5
    assert f"{path} is not a regular file" in caplog.text


def _protocol_4(payload: object, path: Path) -> None:
    torch.save(payload, path, pickle_protocol=4)  # STACK_GLOBAL: the callable's name is not on a GLOBAL line


def _legacy_format(payload: object, path: Path) -> None:
    torch.save(payload, path, _use_new_zipfile_serialization=False)  # not a zip: no data.pkl to scan


@pytest.mark.slow
@pytest.mark.parametrize("write", [_protocol_4, _legacy_format])
def test_a_pickle_the_static_scan_cannot_read_is_never_loaded(
    pretrain: Path, tmp_path: Path, write, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch's scan of a pickle is static: opcodes it does not read, or a file that is not torch's zip format,
    are damage (the file named), never handed to DeepSpeed's weights_only=False load."""
    marker = tmp_path / "code-ran"
    tag = pretrain / tag_for(10)
    optim = next(tag.glob("*optim_states.pt"))
    write({"optimizer_state_dict": _Planted(marker)}, optim)
    _rerecord(tag, optim.name)
    assert convert_main(["--checkpoint", str(pretrain), "--out", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert f"{optim} is not a readable torch checkpoint" in err and "Traceback" not in err
    assert resolve_resume("auto", pretrain).step == 5
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "what"), [("a" * 63, "64 hex digits"), ("A" * 64, "64 hex digits"), (7, "64 hex digits")]
)
def test_a_checksum_of_the_wrong_form_is_a_damaged_record(pretrain: Path, name: object, what: str) -> None:
    tag = pretrain / tag_for(10)
    record = _record(tag)
    record["sha256"]["mp_rank_00_model_states.pt"] = name
    (tag / COMPLETE_FILE).write_text(json.dumps(record))
    with pytest.raises(DamagedCheckpoint, match=what):
        read_checkpoint(tag)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["/etc/passwd", "rank_state/../../../x.pt", "a\\..\\..\\b.pt", "rank_state//../x.pt"])
def test_a_record_naming_a_file_outside_its_tag_is_damaged(pretrain: Path, name: str) -> None:
    tag = pretrain / tag_for(10)
    record = _record(tag)
    record["files"][name] = 5
    (tag / COMPLETE_FILE).write_text(json.dumps(record))
    with pytest.raises(DamagedCheckpoint, match="is not a path inside the checkpoint"):
        read_checkpoint(tag)


PLANTED_SCRIPT = "open({marker!r}, 'w').write('ran')\n"


@pytest.mark.slow
def test_scripts_in_a_checkpoint_are_never_run_nor_imported(
    pretrain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DeepSpeed copies zero_to_fp32.py into checkpoint.dir; a checkpoint from elsewhere may carry any script (in
    the tag too, named like a module something imports). Conversion consolidates with DeepSpeed's own module;
    nothing of the checkpoint but its verified pickles is loaded, and a script is no damage (DeepSpeed reads
    only *.pt)."""
    marker = tmp_path / "script-ran"
    tag = pretrain / tag_for(10)
    for place in (pretrain, tag):
        for script in ("zero_to_fp32.py", "zero_to_torch.py", "deepspeed.py", "torch.py", "layoutlmv3.py"):
            (place / script).write_text(PLANTED_SCRIPT.format(marker=str(marker)))
            (place / script).chmod(0o755)
    assert convert_main(["--checkpoint", str(pretrain), "--out", str(tmp_path / "model")]) == 0, capsys.readouterr()
    assert resolve_resume("auto", pretrain).step == 10
    assert not marker.exists()
