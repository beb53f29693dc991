"""Every setting of a config dataclass tree with its default and meaning, for a launcher's `--help`: read from the
dataclasses themselves (the comment beside or above each field), so the list cannot drift from the code.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from layoutlmv3.training.signals import EXIT_BAD_CONFIG

REQUIRED = "(required)"


@dataclass(frozen=True)
class Setting:
    name: str  # dotted, as given on the command line: train.lr
    default: Any
    doc: str


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its comment (the one on its line, else the comment lines right above it) for `cls` and the
    dataclasses it inherits from (the nearest definition wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and klass is not object:
            docs.update({name: doc for name, doc in _own_field_docs(klass).items() if doc})
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # defined where no source is kept
        return {}
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    docs = {}
    (klass,) = ast.parse(source).body
    for node in klass.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        if beside:  # on the field's own line(s), e.g. inside a default wrapped in parentheses
            docs[node.target.id] = " ".join(beside)
            continue
        above, line = [], node.lineno - 1
        while line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        docs[node.target.id] = " ".join(above)
    return docs


def settings(cls: type, prefix: str = "", defaults: Any = None) -> list[Setting]:
    """Every leaf setting of the dataclass tree `cls`, depth first, with its default and doc (`defaults`: an
    instance whose values are the defaults, e.g. what a parent's default_factory makes)."""
    found = []
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        default = getattr(defaults, field.name) if defaults is not None else _field_default(field)
        if dataclasses.is_dataclass(hints[field.name]):
            nested = default if dataclasses.is_dataclass(default) else None
            found += settings(hints[field.name], f"{prefix}{field.name}.", nested)
        else:
            found.append(Setting(f"{prefix}{field.name}", default, docs.get(field.name, "")))
    return found


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        try:
            return field.default_factory()
        except ValueError:  # a section whose defaults alone are incomplete (it needs a data source)
            return None
    return REQUIRED


def settings_help(cls: type, width: int = 118) -> str:
    """The `--help` block listing every setting of `cls` as `--NAME VALUE` (default; meaning)."""
    rows = ["settings (any of them as --NAME VALUE; VALUE is read as YAML; defaults before the config file):"]
    for setting in settings(cls):
        default = yaml.safe_dump(_plain(setting.default), default_flow_style=True, width=10**6).strip()
        default = setting.default if setting.default is REQUIRED else default.removesuffix("...").strip()
        text = f"--{setting.name} (default {default})" + (f": {setting.doc}" if setting.doc else "")
        rows += textwrap.wrap(text, width, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(rows)


def config_yaml(config: Any) -> str:
    """The resolved config as YAML (`--print-config`): what the run would use, reloadable as its --config."""
    values = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
    return yaml.safe_dump(_plain(values), sort_keys=False)


def _plain(value: Any) -> Any:
    """Tuples as lists, so the YAML has no Python tags."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def add_common_arguments(parser: argparse.ArgumentParser, config_help: str, out_help: str, resume_help: str) -> None:
    """The flags every training launcher takes, spelled and meaning the same: --config, --out, --resume,
    --print-config (the --section.key VALUE overrides are the launcher's unknown arguments)."""
    parser.add_argument("--config", required=True, type=Path, metavar="YAML", help=config_help)
    parser.add_argument("--out", metavar="DIR", help=out_help)
    parser.add_argument("--resume", default="auto", metavar="{auto,none,PATH}", help=resume_help)
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (the file, then the overrides) as YAML and exit",
    )
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher


def report_bad_config(error: Exception) -> int:
    """Every launcher's one format for a config or input it cannot use: `error: ...` on stderr, exit 2."""
    print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_CONFIG
