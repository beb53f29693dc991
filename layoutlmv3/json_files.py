"""Reading JSON that comes from data (manifests, annotations, OCR files, records), with errors that name the file.

`json.loads` alone says "Expecting value: line 1 column 1 (char 0)" -- not which of a million files, nor that the
"manifest" a server sent was an HTML error page. Every reader of a JSON file from data goes through here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from layoutlmv3.data_roots import NotARegularFile, check_regular_file


class JsonFileError(ValueError):
    """A JSON file (or URL) that cannot be read as JSON; the message names it and says where it broke."""


def parse_json(text: str | bytes, where: str) -> Any:
    """`text` parsed; `where` (a path or URL) is named in the error, with a hint when it looks like a web page."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        head = text[:200].decode("utf-8", "replace") if isinstance(text, bytes) else text[:200]
        hint = " (it looks like an HTML page, e.g. a server's error page)" if "<html" in head.lower() else ""
        raise JsonFileError(f"{where} is not valid JSON{hint}: {error}") from None
    except RecursionError:
        raise JsonFileError(f"{where} is not valid JSON: nested too deeply") from None


def read_json_file(path: str | Path) -> Any:
    """A local JSON file parsed; a missing or unreadable file raises OSError naming it, bad JSON JsonFileError."""
    path = Path(path)
    try:
        check_regular_file(path)  # a FIFO named like a JSON file would block the reader for ever
        data = path.read_bytes()
    except NotARegularFile as error:  # a folder, FIFO, device: named with its kind
        raise JsonFileError(f"{error}, expected a JSON file") from None
    return parse_json(data, str(path))
