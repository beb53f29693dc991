"""`--help` lists every setting of a job's config with its default and meaning, read from the dataclasses."""

from __future__ import annotations

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
