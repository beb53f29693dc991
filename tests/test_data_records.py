"""The shared readers of records from data: JSON files that name themselves, the one checksum."""

from __future__ import annotations

import hashlib

import pytest

from layoutlmv3.checksums import StreamDigest, file_digest
from layoutlmv3.json_files import JsonFileError, parse_json, read_json_file


def test_bad_json_names_its_file_and_an_html_page_is_called_one(tmp_path):
    broken = tmp_path / "manifest.json"
    broken.write_text('{"shards": [')
    with pytest.raises(JsonFileError, match=r"manifest\.json is not valid JSON"):
        read_json_file(broken)
    with pytest.raises(JsonFileError, match="looks like an HTML page") as caught:
        parse_json(b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "http://127.0.0.1:1/m.json")
    assert "http://127.0.0.1:1/m.json" in str(caught.value)
    with pytest.raises(JsonFileError, match="not valid JSON"):
        parse_json(b"\xff\xfe\x00", "f.json")
    with pytest.raises(JsonFileError, match="nested too deeply"):
        parse_json("[" * 100_000 + "]" * 100_000, "deep.json")
    with pytest.raises(JsonFileError, match="is a folder"):
        read_json_file(tmp_path)
    assert read_json_file(_written(tmp_path / "ok.json", '{"a": [1, 2]}')) == {"a": [1, 2]}


def test_the_checksum_is_sha256sum_s_and_a_stream_gives_the_same(tmp_path):
    data = bytes(range(256)) * 9000
    path = _written(tmp_path / "blob", data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    stream = StreamDigest()
    for start in range(0, len(data), 777):
        stream.update(data[start : start + 777])
    assert (stream.hexdigest(), stream.size) == (file_digest(path), len(data))


def _written(path, content):
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def test_json_from_data_holds_only_finite_numbers_and_has_a_size_cap(tmp_path):
    for text in ('{"box": [NaN, 0, 1, 1]}', '{"x": Infinity}', "[-Infinity]", '{"x": 1e999}', "[" + "9" * 5000 + "]"):
        with pytest.raises(JsonFileError, match="words.json is not valid JSON"):
            parse_json(text, "words.json")
    assert parse_json('{"x": 1.5e300, "n": -3}', "ok.json") == {"x": 1.5e300, "n": -3}
    big = _written(tmp_path / "page.json", '{"words": "' + "x" * 2000 + '"}')
    with pytest.raises(JsonFileError, match="larger than 1000 bytes"):
        read_json_file(big, max_bytes=1000)
    assert len(read_json_file(big, max_bytes=5000)["words"]) == 2000


def test_a_json_file_over_the_cap_is_refused_from_its_size_unread(tmp_path, monkeypatch):
    import layoutlmv3.json_files as json_files

    huge = tmp_path / "page.json"
    with open(huge, "wb") as file:
        file.truncate(10 << 30)  # a sparse 10 GB "page.json": reading even the cap's worth would be 256 MiB

    def never_opened(*args, **kwargs):
        raise AssertionError("opened a file already refused by its size")

    monkeypatch.setattr(json_files, "open", never_opened, raising=False)
    with pytest.raises(JsonFileError, match=rf"{huge} is larger than {json_files.MAX_JSON_BYTES} bytes"):
        read_json_file(huge)
