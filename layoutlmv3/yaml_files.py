"""Reading the YAML config files of the three jobs, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path) -> Any:
    """The parsed file (None when empty). Raises FileNotFoundError naming the path, and ValueError with the file,
    line and column of a syntax error (parsing a string instead would report `<unicode string>`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} {'is a directory' if path.is_dir() else 'does not exist'}")
    with open(path, encoding="utf-8") as stream:
        try:
            return yaml.safe_load(stream)
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}") from None
