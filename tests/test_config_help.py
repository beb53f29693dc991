"""`--help` lists every setting of a job's config with its default and meaning, read from the dataclasses."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from layoutlmv3.config_help import field_docs, settings, settings_help
from layoutlmv3.finetune.config import FinetuneConfig
from layoutlmv3.pretraining.image_tokenizer_job import ImageTokenizerRunConfig
from layoutlmv3.pretraining.run_config import RunConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_CONFIGS = {"pretrain": RunConfig, "finetune": FinetuneConfig, "image_tokenizer": ImageTokenizerRunConfig}


@dataclass
class _Inner:
    # A block above the field,
    # over two lines.
    size: int = 3
    name: str = "x"  # inside a wrapped default


@dataclass
class _Outer:
    steps: int = 10  # beside the field
    inner: _Inner = field(default_factory=lambda: _Inner(size=7))
    bare: float = 0.5


@dataclass
class _Derived(_Outer):
    steps: int = 20


def test_docs_come_from_the_comment_beside_or_above_each_field_and_are_inherited() -> None:
    assert field_docs(_Inner) == {
        "size": "A block above the field, over two lines.",
        "name": "inside a wrapped default",
    }
    assert field_docs(_Derived)["steps"] == "beside the field"  # redefined without a comment: the parent's doc
    found = {setting.name: (setting.default, setting.doc) for setting in settings(_Derived)}
    assert found == {
        "steps": (20, "beside the field"),
        "inner.size": (7, "A block above the field, over two lines."),  # the parent's factory sets the default
        "inner.name": ("x", "inside a wrapped default"),
        "bare": (0.5, ""),
    }


@pytest.mark.parametrize("job", sorted(JOB_CONFIGS))
def test_every_setting_of_every_job_has_a_meaning(job: str) -> None:
    undocumented = [setting.name for setting in settings(JOB_CONFIGS[job]) if not setting.doc]
    assert not undocumented, f"{job}: settings without a comment in their dataclass: {undocumented}"


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "configs").glob("*/*.yaml")), ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_every_key_of_a_shipped_config_is_listed_with_its_default(path: Path) -> None:
    values = yaml.safe_load(path.read_text())
    listed = {setting.name for setting in settings(JOB_CONFIGS[path.parent.name])}
    keys = {
        f"{section}.{key}" if isinstance(body, dict) else section
        for section, body in values.items()
        for key in (body if isinstance(body, dict) else [None])
    }
    assert keys <= listed, f"{path}: not in --help: {sorted(keys - listed)}"
    text = settings_help(JOB_CONFIGS[path.parent.name])
    assert all(f"--{name} (default " in text for name in listed)


LAUNCHERS = {
    "pretrain": ("launch.pretrain", RunConfig, ["--config", "configs/pretrain/tiny.yaml"]),
    "finetune": ("launch.finetune", FinetuneConfig, ["--config", "configs/finetune/tiny.yaml", "--model", "m"]),
    "image_tokenizer": (
        "launch.train_image_tokenizer",
        ImageTokenizerRunConfig,
        ["--config", "configs/image_tokenizer/tiny.yaml"],
    ),
}


@pytest.mark.parametrize("job", sorted(LAUNCHERS))
def test_each_launchers_help_names_every_setting_and_the_common_flags(job: str) -> None:
    module, config_class, _ = LAUNCHERS[job]
    text = importlib.import_module(module).build_parser().format_help()
    missing = [setting.name for setting in settings(config_class) if f"--{setting.name} (default " not in text]
    assert not missing, f"{module} --help lacks {missing}"
    assert all(flag in text for flag in ("--config", "--out", "--resume", "--print-config"))


@pytest.mark.parametrize("job", sorted(LAUNCHERS))
def test_print_config_prints_the_resolved_config_which_reloads_as_the_same(
    job: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, config_class, arguments = LAUNCHERS[job]
    monkeypatch.chdir(REPO_ROOT)
    main = importlib.import_module(module).main
    assert main([*arguments, "--print-config", "--train.lr", "0.25", "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "resolved.yaml").write_text(printed)
    assert main(["--config", str(tmp_path / "resolved.yaml"), *arguments[2:], "--print-config"]) == 0
    assert capsys.readouterr().out == printed  # nothing lost or changed on the way through YAML
    resolved = yaml.safe_load(printed)
    assert resolved["train"]["lr"] == 0.25 and str(tmp_path / "o") in printed


@pytest.mark.parametrize("job", sorted(LAUNCHERS))
def test_a_bad_setting_is_one_error_line_in_every_launcher(
    job: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, _, arguments = LAUNCHERS[job]
    monkeypatch.chdir(REPO_ROOT)
    assert importlib.import_module(module).main([*arguments, "--train.lrr", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: unknown key(s) in config.train: ['lrr']")
