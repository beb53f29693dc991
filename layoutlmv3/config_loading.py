"""The one config system of the three jobs (pretraining, fine-tuning, image-tokenizer training): dataclass trees
read from YAML, with dotted command-line overrides (`--train.lr 1e-4`, read as YAML scalars) applied before the
tree is built, every value checked against its field's type, unknown keys refused with the known ones listed, and
each section's own rules (`__post_init__` or `validate()`) run. A typo fails at start-up with the dotted path in
the message, not hours into a run. Each job's config module declares only its dataclasses.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from layoutlmv3.yaml_files import read_yaml

Config = TypeVar("Config")


def load_config(cls: type[Config], path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """`cls` from a YAML file (None: all defaults) plus `--section.key VALUE` overrides, checked."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config file must be a YAML mapping")
    for dotted, raw in parse_overrides(overrides or []):
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ValueError(f"--{dotted} {raw!r} is not a YAML value: {error}") from None
        set_dotted(values, dotted, value)
    return build(cls, values, "config")


def parse_overrides(arguments: list[str]) -> list[tuple[str, str]]:
    """['--train.lr', '1e-4', '--data.num_workers=2'] -> [('train.lr', '1e-4'), ('data.num_workers', '2')].

    Top-level settings have no section: `--deepspeed ds_configs/zero3_bf16.json`. Unknown names are reported
    when the config is built, with the known ones.
    """
    pairs, index = [], 0
    while index < len(arguments):
        argument = arguments[index]
        if not argument.startswith("--") or len(argument.split("=", 1)[0]) < 3:
            raise ValueError(f"overrides look like --section.key VALUE, got {argument!r}")
        if "=" in argument:
            key, value = argument[2:].split("=", 1)
            index += 1
        elif index + 1 < len(arguments) and not arguments[index + 1].startswith("--"):
            key, value = argument[2:], arguments[index + 1]
            index += 2
        else:
            # Also where the next word is a flag: a mistyped option (--quiet) would otherwise swallow it. A value
            # that itself begins with -- is given as --key=VALUE.
            hint = "" if "." in argument else " (an option this launcher lacks? see --help)"
            raise ValueError(f"override {argument!r} has no value{hint}")
        pairs.append((key, value))
    return pairs


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = values
    for name in parents:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot override {dotted}: {name} is not a section")
    node[leaf] = value


def build(cls: type, values: Any, path: str):
    """Instantiate dataclass `cls` from a mapping, checking keys and scalar types; `path` names it in errors."""
    if not isinstance(values, dict):
        raise ValueError(f"{path} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) in {path}: {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: coerce(hints[name], value, f"{path}.{name}") for name, value in values.items()}
    instance = cls(**kwargs)
    if hasattr(instance, "validate"):  # sections that check their values outside __post_init__
        instance.validate()
    return instance


def coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, path)
            except ValueError as error:
                errors.append((option, error))
        # The option of the value's own kind (a list for a list, ...) explains best what is wrong inside it.
        same_kind = [error for option, error in errors if isinstance(value, typing.get_origin(option) or option)]
        if len(same_kind) == 1:
            raise same_kind[0]
        raise ValueError(f"{path}: {value!r} is not any of {options}")
    if origin is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return tuple(coerce(typing.get_args(hint)[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise ValueError(f"{path}: expected a list of {len(items)} values, got {value!r}")
        return tuple(coerce(h, v, f"{path}[{i}]") for i, (h, v) in enumerate(zip(items, value, strict=True)))
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        return [coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML (YAML 1.1) reads `1e-4` as a string
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{path}: expected a number, got {value!r}") from None
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint) and not _bool_as_int(hint, value)):
        return value
    raise ValueError(f"{path}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _bool_as_int(hint: Any, value: Any) -> bool:
    return hint is int and isinstance(value, bool)  # bool is an int subclass; `steps: true` is a mistake


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
