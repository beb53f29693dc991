"""Run config (YAML + dotted overrides) and DeepSpeed JSON validation; every shipped file loads and validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from layoutlmv3.finetune.config import load_finetune_config
from layoutlmv3.pretraining.image_tokenizer_job import load_image_tokenizer_config
from layoutlmv3.pretraining.run_config import RunConfig, load_run_config, parse_overrides
from layoutlmv3.training.ds_config import load_ds_config, validate_ds_config, with_global_batch

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_CONFIGS = sorted((REPO_ROOT / "configs" / "pretrain").glob("*.yaml"))
DS_CONFIGS = sorted((REPO_ROOT / "ds_configs").glob("*.json"))
REQUIRED = ["--data.train_shards", "s", "--data.tokenizer", "t", "--objectives.image_tokenizer", "i"]
MINIMAL_DS = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "zero_optimization": {"stage": 2},
}


# ---------------------------------------------------------------- shipped files


def test_the_expected_files_are_shipped() -> None:
    assert {path.stem for path in RUN_CONFIGS} == {"tiny", "base", "large"}
    expected = {
        f"{zero}_{precision}" for zero in ("zero1", "zero2", "zero3", "zero3_offload") for precision in ("bf16", "fp16")
    }
    jobs = set(JOB_DS_STAGES)  # fine-tuning's and the image tokenizer's
    assert {path.stem for path in DS_CONFIGS} == expected | {"cpu_fp32", "cpu_zero3_fp32"} | jobs


# Stages of the DeepSpeed files named after a job rather than a stage: fine-tuning replicates a 125M model (ZeRO-1
# on GPU shards only the optimizer state; ZeRO-0 on CPU), the image tokenizer is small (ZeRO-0, fp32 engine).
JOB_DS_STAGES = {"finetune_bf16": 1, "finetune_cpu_fp32": 0, "finetune_cpu_fp32_batch16": 0, "image_tokenizer_fp32": 0}


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs" / "finetune").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_finetune_config_validates_with_its_deepspeed_config(path: Path) -> None:
    config = load_finetune_config(path, ["--model.path", "m"])
    load_ds_config(REPO_ROOT / config.deepspeed)


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "configs" / "image_tokenizer").glob("*.yaml")), ids=lambda p: p.stem
)
def test_shipped_image_tokenizer_config_validates_with_its_deepspeed_config(path: Path) -> None:
    config = load_image_tokenizer_config(path)
    load_ds_config(REPO_ROOT / config.deepspeed)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda path: path.stem)
def test_shipped_run_config_validates_with_its_deepspeed_config(path: Path) -> None:
    config = load_run_config(path)
    assert (REPO_ROOT / config.deepspeed).is_file()
    load_ds_config(REPO_ROOT / config.deepspeed)


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "configs").glob("*/*.yaml")), ids=lambda path: f"{path.parent.name}/{path.stem}"
)
def test_every_shipped_config_pins_its_global_batch_for_any_node_count(path: Path) -> None:
    """A recipe must not change with the number of ranks: each shipped config sets train.global_batch_size, and its
    DeepSpeed JSON's micro-batch fits it on one rank (the accumulation then follows the world size)."""
    loaders = {"pretrain": load_run_config, "image_tokenizer": load_image_tokenizer_config}
    config = loaders.get(path.parent.name, lambda p: load_finetune_config(p, ["--model.path", "m"]))(path)
    assert config.train.global_batch_size is not None, f"{path} does not pin train.global_batch_size"
    adjusted = with_global_batch(load_ds_config(REPO_ROOT / config.deepspeed), config.train.global_batch_size, 1)
    assert adjusted["train_micro_batch_size_per_gpu"] * adjusted["gradient_accumulation_steps"] == (
        config.train.global_batch_size
    )


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda path: path.stem)
def test_shipped_deepspeed_config_validates(path: Path) -> None:
    values = load_ds_config(path)
    name = path.stem
    stage = values["zero_optimization"]["stage"]
    expected_stage = JOB_DS_STAGES.get(name, 3 if "zero3" in name else int(name[4]) if name.startswith("zero") else 2)
    assert stage == expected_stage
    assert values.get("bf16", {}).get("enabled", False) == name.endswith("bf16")
    fp16 = values.get("fp16", {})
    assert fp16.get("enabled", False) == name.endswith("fp16")
    if name.endswith("fp16"):  # dynamic loss scaling
        assert fp16["loss_scale"] == 0 and fp16["min_loss_scale"] >= 1 and fp16["hysteresis"] >= 1
        assert fp16["initial_scale_power"] > 0
    offload = values["zero_optimization"].get("offload_optimizer", {}).get("device")
    assert offload == ("cpu" if "offload" in name else None)
    assert values["gradient_clipping"] == 1.0


def test_base_config_has_the_paper_defaults() -> None:
    config = load_run_config(REPO_ROOT / "configs" / "pretrain" / "base.yaml")
    train = config.train
    assert config.model.flavor == "base" and train.steps == 500_000 and train.lr == 1e-4
    assert train.betas == (0.9, 0.98) and train.weight_decay == 0.01 and train.warmup_ratio == 0.048
    ds = load_ds_config(REPO_ROOT / config.deepspeed)
    assert ds["bf16"]["enabled"]
    assert train.global_batch_size == 2048  # the paper's, on any node count
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 64 == 2048  # 8 nodes x 8


def test_tiny_config_runs_on_a_cpu() -> None:
    config = load_run_config(REPO_ROOT / "configs" / "pretrain" / "tiny.yaml")
    ds = load_ds_config(REPO_ROOT / config.deepspeed)
    assert config.model.flavor == "tiny" and config.data.max_length <= 128
    assert "bf16" not in ds and "fp16" not in ds


# ---------------------------------------------------------------- overrides


def test_overrides_are_read_as_yaml_and_coerced() -> None:
    config = load_run_config(
        REPO_ROOT / "configs" / "pretrain" / "tiny.yaml",
        [
            "--train.lr",
            "1e-4",
            "--data.pad_to=64",
            "--train.betas",
            "[0.9, 0.999]",
            "--train.debug_nan_batches",
            "[3, 5]",
            "--data.val_shards",
            "null",
            "--model.overrides",
            "{attn_implementation: eager}",
            "--deepspeed",
            "ds_configs/cpu_zero3_fp32.json",
        ],
    )
    assert config.train.lr == 1e-4 and isinstance(config.train.lr, float)
    assert config.data.pad_to == 64
    assert config.train.betas == (0.9, 0.999)
    assert config.train.debug_nan_batches == [3, 5]
    assert config.data.val_shards is None
    assert config.model.overrides == {"attn_implementation": "eager"}
    assert config.deepspeed == "ds_configs/cpu_zero3_fp32.json"


def test_defaults_plus_required_paths_make_a_config() -> None:
    config = load_run_config(None, REQUIRED)
    defaults = RunConfig()
    assert (config.train, config.model, config.deepspeed) == (defaults.train, defaults.model, defaults.deepspeed)
    assert (config.data.train_shards, config.data.tokenizer, config.objectives.image_tokenizer) == ("s", "t", "i")
    assert parse_overrides(["--a.b", "1", "--c=2"]) == [("a.b", "1"), ("c", "2")]
    assert parse_overrides(["--a.b=--x"]) == [("a.b", "--x")]  # a value that begins with --


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--trian.lr", "1"], r"unknown key\(s\) in config: \['trian'\]; known: \['checkpoint', 'data'"),
        (["--train.learning_rate", "1"], r"unknown key\(s\) in config.train: \['learning_rate'\]"),
        (["--train.steps", "1.5"], "config.train.steps: expected int, got 1.5"),
        (["--train.steps", "true"], "config.train.steps: expected int, got True"),
        (["--train.lr", "fast"], "config.train.lr: expected a number, got 'fast'"),
        (["--train.betas", "[0.9]"], r"config.train.betas: expected a list of 2 values"),
        (["--train.debug_nan_batches", "3"], "config.train.debug_nan_batches: expected a list, got 3"),
        (["--train.steps", "0"], "train.steps must be >= 1, got 0"),
        (["--train.warmup_ratio", "1.5"], r"train.warmup_ratio must lie in \[0, 1\], got 1.5"),
        (["--train.stop_at_step", "600000"], "train.stop_at_step must lie in 1..train.steps"),
        (["--data.pad_to", "shortest"], "data.pad_to must be 'max_length', 'longest' or a positive int"),
        (["--data.length_bucket_batches", "1"], r"data.length_bucket_batches must be 0 \(off\) or >= 2, got 1"),
        (["--objectives.text_mask_ratio", "2"], r"objectives.text_mask_ratio must lie in \[0, 1\]"),
        (["--objectives.span_lambda", "0"], "objectives.span_lambda must be > 0, got 0"),
        (["--objectives.mim_weight", "-1"], "objectives.mim_weight must be >= 0, got -1"),
        (["--checkpoint.keep", "0"], "checkpoint.keep must be >= 1, got 0"),
        (["--logging.every", "0"], "logging.every must be >= 1, got 0"),
        (["--data", "x"], "config.data must be a mapping, got 'x'"),
        (["train.lr", "1"], "overrides look like --section.key VALUE, got 'train.lr'"),
        (["--train.lr"], "override '--train.lr' has no value"),
        (["--quiet", "--train.lr", "1"], r"override '--quiet' has no value \(an option this launcher lacks\?"),
        (["--train.lr", "--train.steps", "5"], r"override '--train.lr' has no value$"),
    ],
)
def test_bad_settings_fail_with_the_dotted_path(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_run_config(None, [*REQUIRED, *overrides])


def test_missing_required_paths_are_named() -> None:
    with pytest.raises(ValueError, match=r"missing required setting\(s\): \['data.tokenizer'"):
        load_run_config(None, ["--data.train_shards", "s"])


def test_a_run_config_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ValueError, match="a config file must be a YAML mapping"):
        load_run_config(path)


# ---------------------------------------------------------------- DeepSpeed JSON


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gradient_clippping": 1.0}, r"unknown key\(s\) \['gradient_clippping'\] \(DeepSpeed would ignore them\)"),
        ({"optimizer": {"type": "AdamW"}}, "remove 'optimizer': the optimizer is built from the run config"),
        ({"scheduler": {"type": "WarmupLR"}}, "remove 'scheduler'"),
        ({"train_batch_size": 2048}, "remove 'train_batch_size': the global batch is micro-batch x accumulation"),
        ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu must be a positive integer"),
        ({"gradient_accumulation_steps": 1.5}, "gradient_accumulation_steps must be a positive integer"),
        ({"gradient_clipping": "yes"}, "gradient_clipping must be a number >= 0"),
        ({"checkpoint": {"load_universal": True}}, "checkpoint.load_universal is set by the run"),
        ({"zero_optimization": {"stage": 7}}, "rejected by DeepSpeed"),
        ({"zero_optimization": {"stage": 2, "overlap_com": True}}, "rejected by DeepSpeed.*overlap_com"),
        ({"bf16": {"enabled": True}, "fp16": {"enabled": True}}, "rejected by DeepSpeed.*cannot be simultaneously"),
    ],
)
def test_bad_deepspeed_configs_are_refused_with_the_reason(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_ds_config({**MINIMAL_DS, **change}, "test.json")


def test_deepspeed_config_needs_the_batch_and_zero_keys(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2}))
    with pytest.raises(ValueError, match=rf"{path}: missing \['gradient_accumulation_steps'"):
        load_ds_config(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_ds_config(path)


def test_compile_layers_compiles_every_encoder_layer_in_place():
    from layoutlmv3.pretraining.build import build_model
    from layoutlmv3.pretraining.run_config import RunConfig, build

    config = build(RunConfig, {"model": {"flavor": "tiny", "compile_layers": True}}, "config")
    model = build_model(config, vocab_size=300, codebook_size=64)
    layers = model.layoutlmv3.encoder.layers
    assert len(layers) == 2 and all(layer._compiled_call_impl is not None for layer in layers)
    assert model.layoutlmv3.text_embeddings._compiled_call_impl is None  # only the layers
