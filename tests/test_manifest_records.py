"""A manifest is data: its shard names stay plain file names inside its directory and never reach a shell; its
entries have the shape a reader needs or are refused by name; and each shard's recorded size and sha256 tell the
file the manifest describes from another under its name (data prep writes them, merging keeps them, the loader
checks them)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_prep.manifest import MergeError, make_manifest, merge_task_manifests, output_names, write_outputs
from data_prep.merge_manifests import main as merge_main
from data_prep.page_words import shard_words
from data_prep.progress import ProgressMismatch, load_progress
from data_prep.shard_writer import ShardWriter, encode_members
from layoutlmv3.checksums import file_digest
from layoutlmv3.data import build_train_loader, list_shards, read_manifest
from layoutlmv3.data.sample_format import MANIFEST_FILE, SHARD_PATTERN, sample_key
from layoutlmv3.data.shards import ManifestError, check_shard_name
from layoutlmv3.json_files import JsonFileError
from tests.shard_files import batch_keys, write_dataset

COUNTS = (4, 5, 3)

BAD_NAMES = [
    "../x.tar",
    "../../etc/x.tar",
    "a/../../x.tar",
    "/etc/x.tar",
    "x.tar; touch PWNED #",
    "$(touch PWNED).tar",
    "`touch PWNED`.tar",
    "x y.tar",
    "x\n.tar",
    "x\x00.tar",
    "-rf.tar",
    ".hidden.tar",
    "a//b.tar",
    "x.tgz",
    "",
    5,
    None,
]


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_FILE).read_text())


def _rewrite(root: Path, change) -> None:
    manifest = _manifest(root)
    change(manifest)
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))


def _loader_keys(source) -> list[str]:
    return batch_keys(list(build_train_loader(source, 2, num_workers=0, shuffle_buffer=0, resampled=False)))


# ---------------------------------------------------------------- names: plain file names inside the directory


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_shard_name_that_is_not_a_plain_file_name_refuses_the_manifest(tmp_path: Path, name: object) -> None:
    root = tmp_path / "shards"
    write_dataset(root, COUNTS)
    _rewrite(root, lambda manifest: manifest["shards"][1].update(name=name))
    with pytest.raises(ManifestError, match=r"shard entry 1 has name .*refused whole") as caught:
        list_shards(root)
    assert str(root / MANIFEST_FILE) in str(caught.value)
    assert check_shard_name(name) is not None


@pytest.mark.parametrize("name", ["train-000001.tar", "sub/dir/part_1.v2.tar", "A-b_c.tar"])
def test_plain_names_in_subfolders_are_read(tmp_path: Path, name: str) -> None:
    root = tmp_path / "shards"
    keys = write_dataset(root, COUNTS)
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / "train-000001.tar").rename(root / name)
    _rewrite(root, lambda manifest: manifest["shards"][1].update(name=name))
    assert check_shard_name(name) is None
    assert list_shards(root)[1].url == str(root / name)
    assert sorted(_loader_keys(root)) == sorted(keys)


def test_a_pipe_manifest_never_hands_a_name_to_the_shell(tmp_path: Path) -> None:
    """`pipe:CMD .../manifest.json` makes each shard's command from the manifest's names: a name with a shell
    command in it is refused with the manifest, and the command never runs."""
    root = tmp_path / "shards"
    keys = write_dataset(root, COUNTS)
    source = f"pipe:cat {root}/{MANIFEST_FILE}"
    piped = list_shards(source)
    assert [shard.url for shard in piped] == [
        f"pipe:cat {root}/{SHARD_PATTERN.format(prefix='train', index=i)}" for i in range(3)
    ]
    assert sorted(_loader_keys(source)) == sorted(keys)

    planted = tmp_path / "PWNED"
    for name in (f"x.tar; touch {planted} #", f"$(touch {planted}).tar", f"x.tar\ntouch {planted}"):
        _rewrite(root, lambda manifest, name=name: manifest["shards"][0].update(name=name))
        with pytest.raises(ManifestError, match="refused whole"):
            _loader_keys(source)
    assert not planted.exists()


# ---------------------------------------------------------------- shape: named errors, never KeyError/TypeError


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(shards={"name": "a.tar"}), "'shards' must be a list"),
        (lambda m: m.pop("shards"), "'shards' must be a list"),
        (lambda m: m.update(shards=[]), "lists no shards"),
        (lambda m: m["shards"].append("train-000009.tar"), "shard entry 3 is not an object"),
        (lambda m: m["shards"][0].pop("name"), "shard entry 0 has name None"),
        (lambda m: m["shards"][0].pop("samples"), "samples must be an integer >= 0, got None"),
        (lambda m: m["shards"][0].update(samples=-1), "samples must be an integer >= 0, got -1"),
        (lambda m: m["shards"][0].update(samples="4"), "samples must be an integer >= 0, got '4'"),
        (lambda m: m["shards"][0].update(samples=True), "samples must be an integer >= 0, got True"),
        (lambda m: m["shards"][0].update(samples=4.5), "samples must be an integer >= 0, got 4.5"),
        (lambda m: m["shards"][0].update(bytes=-3), "bytes must be an integer >= 0"),
        (lambda m: m["shards"][0].update(sha256="abc"), "sha256 must be 64 lowercase hex digits"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_a_named_error(tmp_path: Path, change, message: str) -> None:
    root = tmp_path / "shards"
    write_dataset(root, COUNTS)
    _rewrite(root, change)
    with pytest.raises(ManifestError, match=message) as caught:
        list_shards(root)
    assert str(root / MANIFEST_FILE) in str(caught.value)


def test_a_manifest_that_is_not_json_or_not_an_object_names_its_file(tmp_path: Path) -> None:
    root = tmp_path / "shards"
    write_dataset(root, COUNTS)
    (root / MANIFEST_FILE).write_text('{"format_version": 1, "shards": [')
    with pytest.raises(JsonFileError, match=rf"{root / MANIFEST_FILE} is not valid JSON"):
        list_shards(root)
    (root / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(ManifestError, match=rf"{root / MANIFEST_FILE}: not a manifest \(a JSON object expected"):
        read_manifest(root)


# ---------------------------------------------------------------- records: size and sha256 checked


def test_data_prep_records_each_shards_sha256_as_written(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "train-000000.tar")
    for page in range(3):
        writer.add(encode_members(sample_key("a.pdf", page), {"meta.json": b"{}", "tok.png": bytes(page * 100)}))
    record = writer.commit()
    path = tmp_path / record.name
    assert record.sha256 == file_digest(path) and record.bytes == path.stat().st_size and record.samples == 3
    assert record.to_json()["sha256"] == record.sha256


def _substitute_same_size(path: Path) -> None:
    """Another shard under the same name and size: one word of a meta.json changed (the tar stays valid)."""
    data = path.read_bytes()
    at = data.rindex(b'"w0"')
    path.write_bytes(data[:at] + b'"x0"' + data[at + 4 :])


def test_a_shard_that_is_not_the_one_its_manifest_describes_is_skipped_and_named(tmp_path: Path, caplog) -> None:
    root = tmp_path / "shards"
    keys = write_dataset(root, COUNTS)
    urls = [shard.url for shard in list_shards(root)]
    _substitute_same_size(Path(urls[0]))
    bigger = tmp_path / "bigger"
    write_dataset(bigger, (COUNTS[1] + 2,), source="big")
    (bigger / "train-000000.tar").replace(urls[1])  # more samples under shard 1's name
    with caplog.at_level(logging.WARNING):
        seen = _loader_keys(root)
    assert f"skipping unreadable data in shard {urls[0]}" in caplog.text and "sha256" in caplog.text
    assert f"skipping unreadable data in shard {urls[1]}" in caplog.text and "its manifest entry records" in caplog.text
    last_of_0 = sample_key("doc/0.pdf", COUNTS[0] - 1)
    assert last_of_0 not in seen  # held back until the checksum is compared: the substitute's end is never read
    assert not [key for key in seen if key.startswith(("doc__1_pdf", "big__"))]  # another size: refused at once
    assert {key for key in keys if key.startswith("doc__2_pdf")} <= set(seen)  # the intact shard is read whole


def test_more_samples_than_recorded_is_damage_even_without_a_size(tmp_path: Path, caplog) -> None:
    root = tmp_path / "shards"
    write_dataset(root, COUNTS)
    _rewrite(root, lambda manifest: [entry.pop(field) for entry in manifest["shards"] for field in ("bytes", "sha256")])
    _rewrite(root, lambda manifest: manifest["shards"][2].update(samples=COUNTS[2] - 1))
    with caplog.at_level(logging.WARNING):
        seen = _loader_keys(root)
    assert f"holds more than the {COUNTS[2] - 1} samples its manifest entry records" in caplog.text
    assert len([key for key in seen if key.startswith("doc__2_pdf")]) == COUNTS[2] - 1  # never one past the record


def test_a_manifest_written_before_checksums_still_loads(tmp_path: Path, caplog) -> None:
    root = tmp_path / "shards"
    keys = write_dataset(root, COUNTS)
    _rewrite(root, lambda manifest: [entry.pop("sha256") for entry in manifest["shards"]])
    assert all(shard.sha256 is None and shard.bytes for shard in list_shards(root))
    with caplog.at_level(logging.WARNING):
        assert sorted(_loader_keys(root)) == sorted(keys)
    assert "skipping" not in caplog.text


# ---------------------------------------------------------------- data prep: merge keeps records, names bad files


def _task_outputs(out: Path, tasks: int = 2) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for task in range(tasks):
        writer = ShardWriter(out / f"train-{task:06d}-000000.tar")
        writer.add(encode_members(sample_key(f"t{task}.pdf", 0), {"meta.json": b"{}"}))
        record = writer.commit()
        entries.append(record.to_json())
        manifest = make_manifest("tok", 0, [record], [])
        write_outputs(out, output_names(task, tasks), manifest, [])
    return entries


def test_merge_keeps_every_field_of_the_shard_entries(tmp_path: Path) -> None:
    entries = _task_outputs(tmp_path)
    merged = merge_task_manifests(tmp_path)
    assert merged["shards"] == entries and all(len(entry["sha256"]) == 64 for entry in entries)
    assert [shard.sha256 for shard in list_shards(tmp_path)] == [entry["sha256"] for entry in entries]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format_version": 1, "shards": [', "manifest.task0001-of-0002.json is not valid JSON"),
        ("<html><body>Not Found</body></html>", "it looks like an HTML page"),
        ("[]", "not a task manifest"),
        ('{"format_version": 1}', "not a task manifest of build_shards"),
    ],
)
def test_merge_names_a_task_manifest_that_is_broken(tmp_path: Path, capsys, content: str, message: str) -> None:
    _task_outputs(tmp_path)
    (tmp_path / "manifest.task0001-of-0002.json").write_text(content)
    with pytest.raises(MergeError, match=message):
        merge_task_manifests(tmp_path)
    with pytest.raises(SystemExit) as exited:
        merge_main(["--out", str(tmp_path)])
    assert "manifest.task0001-of-0002.json" in str(exited.value) and message in str(exited.value)


def test_merge_names_a_bad_shard_entry_and_a_bad_reject_line(tmp_path: Path) -> None:
    _task_outputs(tmp_path)
    task = tmp_path / "manifest.task0000-of-0002.json"
    manifest = json.loads(task.read_text())
    manifest["shards"][0]["name"] = "../elsewhere.tar"
    task.write_text(json.dumps(manifest))
    with pytest.raises(MergeError, match=rf"{task}: shard entry 0 has name '\.\./elsewhere\.tar'"):
        merge_task_manifests(tmp_path)
    _task_outputs(tmp_path)
    (tmp_path / "rejects.task0001-of-0002.jsonl").write_text('{"source": "a.png", "page": 0, "reason": "x"}\n{"so\n')
    with pytest.raises(MergeError, match=r"rejects\.task0001-of-0002\.jsonl line 2 is not valid JSON"):
        merge_task_manifests(tmp_path)
    (tmp_path / "rejects.task0001-of-0002.jsonl").write_text('{"page": 0}\n')
    with pytest.raises(MergeError, match=r"rejects\.task0001-of-0002\.jsonl line 1: not a reject record"):
        merge_task_manifests(tmp_path)


@pytest.mark.parametrize(
    "content", ["{not json", "[]", '{"digest": "d", "shards": "x", "rejects": [], "cursor": [0, 0], "done": false}']
)
def test_an_unreadable_progress_record_is_named_with_what_to_do(tmp_path: Path, content: str) -> None:
    record = tmp_path / "progress" / "train-000000.json"
    record.parent.mkdir()
    record.write_text(content)
    with pytest.raises(ProgressMismatch, match=rf"{record}.*delete it to rebuild that chunk"):
        load_progress(record, "d")


def test_words_from_shards_refuse_a_manifest_name_outside_and_name_a_broken_meta(tmp_path: Path) -> None:
    root = tmp_path / "shards"
    write_dataset(root, COUNTS)
    assert len(shard_words(root)) == sum(COUNTS)  # every sample is page 0 of its own source
    _rewrite(root, lambda manifest: manifest["shards"][0].update(name="../../outside.tar"))
    with pytest.raises(ManifestError, match="refused whole"):
        shard_words(root)
    write_dataset(root, COUNTS)
    shard = root / "train-000000.tar"
    data = shard.read_bytes()
    at = data.index(b'{"words"')
    shard.write_bytes(data[:at] + b"{]" + data[at + 2 :])
    with pytest.raises(ValueError, match=rf"{shard}.*{shard} member .*meta\.json is not valid JSON"):
        shard_words(root)


# ---------------------------------------------------------------- fuzz: any manifest gives safe shards or a named error

FUZZ = settings(
    max_examples=150,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
NAMES = st.one_of(
    st.sampled_from([*BAD_NAMES, "a.tar", "sub/b.tar", "a/./b.tar", "C:\\x.tar", "~/x.tar", "%2e%2e/x.tar"]),
    st.text(max_size=24),
    st.text(alphabet="ab./-_ $;`|&<>*?'\"\\\n\x00~", max_size=16).map(lambda text: text + ".tar"),
)
ENTRY = st.fixed_dictionaries(
    {"name": NAMES, "samples": st.one_of(st.integers(-3, 9), JSON)},
    optional={
        "bytes": st.one_of(st.integers(-3, 10**12), JSON),
        "sha256": st.one_of(st.text("0123456789abcdefABCDEF", min_size=63, max_size=65), JSON),
    },
)
VALID_ENTRY = st.fixed_dictionaries(
    {
        "name": st.from_regex(
            r"[A-Za-z0-9_][A-Za-z0-9._-]{0,8}(/[A-Za-z0-9_][A-Za-z0-9._-]{0,8}){0,2}\.tar", fullmatch=True
        ),
        "samples": st.integers(0, 9),
    },
    optional={"bytes": st.integers(0, 10**12), "sha256": st.text("0123456789abcdef", min_size=64, max_size=64)},
)
HEADER = {"format_version": 1, "tokenizer": "t", "image_size": 224, "tokenizer_image_size": 112}
SHARD_LISTS = st.one_of(
    st.lists(VALID_ENTRY, min_size=1, max_size=3), st.lists(st.one_of(VALID_ENTRY, ENTRY, JSON), max_size=4), JSON
)
MANIFESTS = st.one_of(JSON, st.fixed_dictionaries({"shards": SHARD_LISTS}).map(lambda part: {**HEADER, **part}))


@FUZZ
@given(manifest=MANIFESTS)
def test_fuzz_any_manifest_gives_shards_inside_its_folder_or_a_named_error(tmp_path: Path, manifest: object) -> None:
    root = tmp_path / "fuzz"
    root.mkdir(exist_ok=True)
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))
    try:
        shards = list_shards(root)
    except (ManifestError, JsonFileError) as error:  # JsonFileError: NaN or inf, not JSON of data
        assert str(root / MANIFEST_FILE) in str(error)
        return
    assert shards
    for shard in shards:
        assert Path(shard.url).resolve().is_relative_to(root.resolve()) and shard.url.endswith(".tar")
        assert isinstance(shard.samples, int) and not isinstance(shard.samples, bool) and shard.samples >= 0
        assert shard.bytes is None or (isinstance(shard.bytes, int) and shard.bytes >= 0)
        assert shard.sha256 is None or len(shard.sha256) == 64


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_any_bytes_as_a_manifest_are_a_named_error(tmp_path: Path, data: bytes) -> None:
    (tmp_path / MANIFEST_FILE).write_bytes(data)
    with pytest.raises((JsonFileError, ManifestError), match=re.escape(str(tmp_path / MANIFEST_FILE))):
        list_shards(tmp_path)
