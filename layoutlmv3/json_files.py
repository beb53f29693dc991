"""Reading JSON that comes from data (manifests, annotations, OCR files, records), with errors that name the file.

`json.loads` alone says "Expecting value: line 1 column 1 (char 0)" -- not which of a million files, nor that the
"manifest" a server sent was an HTML error page. Every reader of a JSON file from data goes through here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from layoutlmv3.data_roots import NotARegularFile, check_regular_file

MAX_JSON_BYTES = 1 << 28  # 256 MiB: far above any manifest, annotation or words file of one document


class JsonFileError(ValueError):
    """A JSON file (or URL) that cannot be read as JSON; the message names it and says where it broke."""


def parse_json(text: str | bytes, where: str) -> Any:
    """`text` parsed; `where` (a path or URL) is named in the error, with a hint when it looks like a web page.

    Numbers must be finite: Python's json reads `NaN`, `Infinity` and `1e999` (inf) by default, and a non-finite
    box or count from data would travel on into shards and losses."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, a 5000-digit integer, NaN, inf
        head = text[:200].decode("utf-8", "replace") if isinstance(text, bytes) else text[:200]
        hint = " (it looks like an HTML page, e.g. a server's error page)" if "<html" in head.lower() else ""
        raise JsonFileError(f"{where} is not valid JSON{hint}: {error}") from None
    except RecursionError:
        raise JsonFileError(f"{where} is not valid JSON: nested too deeply") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal[:40]} is not a finite number")
    return value


def read_json_file(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A local JSON file parsed; a missing or unreadable file raises OSError naming it, bad JSON, a folder/FIFO/
    device or a file over `max_bytes` JsonFileError (a 10 GB "page.json" is refused from its size, not read)."""
    try:
        data = read_bounded(path, max_bytes)
    except NotARegularFile as error:  # a folder, FIFO, device: named with its kind
        raise JsonFileError(f"{error}, expected a JSON file") from None
    return parse_json(data, str(path))


def read_bounded(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a file from data (JSON, OCR files): anything but a regular file is refused unopened
    (NotARegularFile: a FIFO named like one would block the reader for ever), a file over `max_bytes` from its
    size, unread (JsonFileError naming it), and one growing after that check is never read past the cap."""
    if check_regular_file(path).st_size > max_bytes:
        raise _too_large(path, max_bytes)
    with open(path, "rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(path, max_bytes)
    return data


def _too_large(path: str | Path, max_bytes: int) -> JsonFileError:
    return JsonFileError(f"{path} is larger than {max_bytes} bytes: not a JSON file of this kind")
