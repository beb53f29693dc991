"""Shard and manifest readers against a hostile data source and a failing cluster: real HTTP servers on 127.0.0.1
(bodies that never end, lengths that lie, chunked streams, redirects to other schemes, error pages), `pipe:`
commands that write for ever, leave children holding their stdout or ignore SIGTERM, and tars built to exhaust
memory or escape a folder. Each must end within its deadline or caps, with the source named, never a hang."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from layoutlmv3.data import list_shards
from layoutlmv3.data.remote import (
    MAX_MEMBER_BYTES,
    MAX_SAMPLE_FILES,
    MAX_SMALL_FILE_BYTES,
    RetryPolicy,
    TarRefused,
    read_bytes,
    shard_samples,
    tar_files,
)
from layoutlmv3.data.shards import ManifestError
from layoutlmv3.json_files import JsonFileError
from tests.raw_servers import alive, deadline_threads, raw_server
from tests.shard_files import write_dataset

QUICK = RetryPolicy(attempts=2, first_delay_s=0.01, deadline_s=1.0)
BOUND_S = 2 * QUICK.deadline_s + 3  # two attempts at their deadline, with room for a loaded machine
TEN_GB = 10 * 1024**3


def _shard(tmp_path: Path, count: int = 3) -> tuple[Path, object]:
    root = tmp_path / "shards"
    write_dataset(root, (count,), source="hostile")
    shard = list_shards(root)[0]
    return Path(shard.url), shard


def _member_header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(tarfile.GNU_FORMAT)


def _respond(head: str, body: Callable[[socket.socket, threading.Event], None]):
    """A server answer: `head` (status line and headers), then whatever `body` sends (until it returns)."""

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            connection.sendall(head.encode() + b"\r\n")
            body(connection, stop)

    return answer


def _forever(first: bytes, chunked: bool = False) -> Callable[[socket.socket, threading.Event], None]:
    """`first`, then zeros as fast as the client takes them, until the client goes or the server stops."""

    def body(connection: socket.socket, stop: threading.Event) -> None:
        def send(data: bytes) -> None:
            connection.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

        send(first)
        while not stop.is_set():
            send(bytes(65536))

    return body


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


# ---------------------------------------------------------------- HTTP bodies that never end or lie


@pytest.mark.parametrize("chunked", [False, True], ids=["no-length", "chunked"])
def test_a_body_that_never_ends_is_cut_by_the_recorded_size_or_the_member_cap(chunked: bool, caplog) -> None:
    """200 without Content-Length (or chunked, never the last chunk), a tar member declaring 10 GB, then zeros for
    ever: with the manifest's size the read stops past it; without, the member is refused from its header. Either
    way at once, not at the deadline, and never 10 GB in memory."""
    head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" if chunked else "HTTP/1.0 200 OK\r\n"
    with raw_server(_respond(head, _forever(_member_header("a.png", 1 << 20), chunked))) as url:
        with caplog.at_level(logging.WARNING):
            got, took = _timed(lambda: list(shard_samples(f"{url}/s.tar", QUICK, size=20480)))
        assert got == [] and took < QUICK.deadline_s
        assert "goes on past the 20480 bytes its manifest entry records" in caplog.text
    caplog.clear()
    with raw_server(_respond(head, _forever(_member_header("a.png", TEN_GB), chunked))) as url:
        with caplog.at_level(logging.WARNING):
            got, took = _timed(lambda: list(shard_samples(f"{url}/s.tar", QUICK)))
        assert got == [] and took < QUICK.deadline_s
        assert f"member 'a.png' declares {TEN_GB} bytes" in caplog.text and "after 2 failed attempts" in caplog.text
    assert not deadline_threads()


def test_a_content_length_that_lies_is_caught(tmp_path: Path, caplog) -> None:
    """Bigger than the body (the connection then closes): the missing bytes fail the attempt when they are
    needed. Smaller, ending exactly between two members: a tar reader takes that for the end of the archive;
    here it is a cut, retried and then skipped by name, even for a shard without a manifest entry."""
    path, shard = _shard(tmp_path, 4)
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        boundary = tar.getmembers()[4].offset  # after the first sample's members
    lies = {"bigger": (len(data) + 4096, data), "smaller": (boundary, data)}
    for case, (length, body) in lies.items():
        caplog.clear()
        head = f"HTTP/1.0 200 OK\r\nContent-Length: {length}\r\n"
        answer = _respond(head, lambda c, s, body=body: c.sendall(body))
        with raw_server(answer) as url, caplog.at_level(logging.WARNING):
            recorded = list(shard_samples(f"{url}/s.tar", QUICK, shard.samples, shard.bytes, shard.sha256))
            unrecorded = list(shard_samples(f"{url}/s.tar", QUICK))
        assert recorded == [], case  # the declared size is not the recorded one: refused before any sample
        assert f"{url}/s.tar is {length} bytes, its manifest entry records {shard.bytes}" in caplog.text
        if case == "bigger":  # every sample is whole: the bytes owed after the archive's end are never needed
            assert len(unrecorded) == 4
        else:
            assert len(unrecorded) <= 1 and "cut short" in caplog.text and "after 2 failed attempts" in caplog.text


# ---------------------------------------------------------------- redirects and error pages


def test_a_redirect_to_another_scheme_is_not_followed() -> None:
    """file: (urllib refuses it) and ftp: (urllib would follow it, with no deadline on that socket): the reader
    opens web resources only. The ftp target is a listener on 127.0.0.1 that must see no connection."""
    ftp = socket.create_server(("127.0.0.1", 0))
    ftp.settimeout(0.5)
    try:
        targets = ["file:///etc/passwd", f"ftp://127.0.0.1:{ftp.getsockname()[1]}/manifest.json"]
        for target in targets:
            head = f"HTTP/1.0 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n"
            with raw_server(_respond(head, lambda c, s: None)) as url, pytest.raises(OSError) as raised:
                read_bytes(f"{url}/manifest.json", RetryPolicy(attempts=1, deadline_s=5))
            assert f"cannot read {url}/manifest.json" in str(raised.value) and "redirect" in str(raised.value).lower()
        with pytest.raises(TimeoutError):
            ftp.accept()  # nobody came
    finally:
        ftp.close()


@pytest.mark.parametrize("status", ["404 Not Found", "429 Too Many Requests", "500 Internal Server Error"])
def test_an_error_status_is_retried_and_named(status: str, caplog) -> None:
    requests = []
    page = b"<html>error</html>"

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        requests.append(1)
        _respond(f"HTTP/1.0 {status}\r\nContent-Length: {len(page)}\r\n", lambda c, s: c.sendall(page))(
            connection, stop
        )

    with raw_server(answer) as url, caplog.at_level(logging.WARNING):
        assert list(shard_samples(f"{url}/s.tar", QUICK)) == []
        assert len(requests) == QUICK.attempts
        assert f"HTTPError: HTTP Error {status.split()[0]}" in caplog.text
        with pytest.raises(OSError, match=f"cannot read {url}/manifest.json: HTTP Error {status.split()[0]}"):
            read_bytes(f"{url}/manifest.json", QUICK)


# ---------------------------------------------------------------- pipe: commands


def test_a_command_that_writes_for_ever_is_bounded(tmp_path: Path, caplog) -> None:
    """After the shard, `yes` for ever: with the manifest's size the read stops there (the command, then writing
    into a closed pipe, exits with SIGPIPE: a failed attempt, named); a 10 GB member header and endless zeros is
    refused from its header."""
    path, shard = _shard(tmp_path)
    header = tmp_path / "header.bin"
    header.write_bytes(_member_header("a.png", TEN_GB))
    with caplog.at_level(logging.WARNING):
        got, took = _timed(
            lambda: list(shard_samples(f"pipe:cat {path}; exec yes", QUICK, 3, shard.bytes, shard.sha256))
        )
        # 2 samples when the shard's end and `yes` arrive in separate reads, 1 when one read holds both (the
        # extra bytes are found before the last-but-one sample is released); the failure is named either way:
        # the command's SIGPIPE exit, or the bytes past the recorded size. Timing, not a count to pin.
        named = "pipe command exited with" in caplog.text or "goes on past the" in caplog.text
        assert 1 <= len(got) <= 2 and took < BOUND_S and named
        got, took = _timed(lambda: list(shard_samples(f"pipe:cat {header}; exec cat /dev/zero", QUICK)))
    assert got == [] and took < QUICK.deadline_s and f"declares {TEN_GB} bytes" in caplog.text


def test_a_background_child_holding_stdout_costs_no_deadline(tmp_path: Path, caplog) -> None:
    """The shard, then a child left running with the command's stdout: the read ends at the recorded size, the
    command exits, and its group (the child) is killed -- no wait for an end of stream that never comes."""
    path, shard = _shard(tmp_path)
    pids = tmp_path / "pids"
    command = f"pipe:cat {path}; sleep 1000 & echo $! > {pids}"
    with caplog.at_level(logging.WARNING):
        got, took = _timed(lambda: list(shard_samples(command, QUICK, 3, shard.bytes, shard.sha256)))
    assert len(got) == 3 and took < QUICK.deadline_s and "failed" not in caplog.text
    assert _gone(int(pids.read_text()))


def test_a_child_that_left_the_group_cannot_hold_a_read_past_its_deadline(tmp_path: Path, caplog) -> None:
    """`setsid` takes a child out of the command's process group, so killing the group leaves it holding the
    pipe open: the read still ends at the deadline (it watches the deadline itself). The escaped child is this
    test's to end."""
    pids = tmp_path / "pids"
    command = f"pipe:setsid sleep 1000 & echo $! >> {pids}; wait"
    try:
        with caplog.at_level(logging.WARNING):
            got, took = _timed(lambda: list(shard_samples(command, QUICK)))
        assert got == [] and took < BOUND_S
        assert "DeadlineExceeded" in caplog.text and "after 2 failed attempts" in caplog.text
        assert not deadline_threads()
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_a_command_that_ignores_sigterm_is_killed_at_its_deadline_and_when_abandoned(tmp_path: Path) -> None:
    path, _ = _shard(tmp_path)
    pids = tmp_path / "pids"
    _, took = _timed(lambda: list(shard_samples(f"pipe:trap '' TERM; echo $$ >> {pids}; sleep 1000", QUICK)))
    assert took < BOUND_S
    samples = shard_samples(f"pipe:trap '' TERM; echo $$ >> {pids}; cat {path}; sleep 1000", QUICK)
    next(samples)
    samples.close()  # the consumer stops early
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 3 and all(_gone(pid) for pid in started)


def _gone(pid: int, within_s: float = 2.0) -> bool:
    """Dead (or a zombie) within `within_s`: a SIGKILL is delivered at once, /proc may show it a moment later."""
    until = time.monotonic() + within_s
    while alive(pid) and time.monotonic() < until:
        time.sleep(0.02)
    return not alive(pid)


# ---------------------------------------------------------------- tars built to hurt


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def test_member_names_that_leave_the_folder_are_only_keys_nothing_is_written(tmp_path: Path) -> None:
    """webdataset's reader (and this one) reads members into memory: `../../x` and `/abs` are sample keys, never
    paths; nothing appears outside (or inside) the working folder."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    names = ["../../escaped.txt", "/tmp/absolute_escape.txt", "ok.txt"]
    shard = _tar(work / "s.tar", [(tarfile.TarInfo(name), b"x") for name in names])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        keys = [sample["__key__"] for sample in shard_samples(str(shard))]
    finally:
        os.chdir(cwd)
    assert keys == ["../../escaped", "/tmp/absolute_escape", "ok"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before and not Path("/tmp/absolute_escape.txt").exists()


def _sparse_header(name: str = "page.png") -> bytes:
    """A GNU sparse member of 10 GB made of one hole: tarfile would hand 10 GB of zeros to whoever reads it."""
    info = tarfile.TarInfo(name)
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 0
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    block[483:495] = tarfile.itn(TEN_GB, 12, tarfile.GNU_FORMAT)  # its real size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block[:512])
    return bytes(block)


def _pax_header(size: int) -> bytes:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, size
    return info.tobuf(tarfile.GNU_FORMAT)


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        (_member_header("a.png", TEN_GB), f"member 'a.png' declares {TEN_GB} bytes"),
        (_member_header("a.png", MAX_MEMBER_BYTES + 1), "more than a sample's file may hold"),
        (_sparse_header(), "is a sparse file"),
        (_pax_header(TEN_GB), f"a tar header declaring {TEN_GB} bytes"),
        (_member_header("././@LongLink", TEN_GB, tarfile.GNUTYPE_LONGNAME), "a tar header declaring"),
        (b"x" * 512, "an invalid tar header"),
    ],
    ids=["10GB-member", "just-over-cap", "sparse", "10GB-pax-header", "10GB-long-name", "garbage"],
)
def test_a_small_tar_that_declares_a_huge_member_or_header_is_refused_from_its_header(
    tmp_path: Path, blocks: bytes, message: str
) -> None:
    path = tmp_path / "bomb.tar"
    path.write_bytes(blocks + bytes(1024))
    tracemalloc.start()
    try:
        with pytest.raises(TarRefused, match=f"{path}: .*{message}"):
            list(tar_files(path.open("rb"), str(path)))
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()
    assert list(shard_samples(str(path))) == []  # a local shard: logged and skipped, as any damage


def test_a_tar_of_countless_entries_is_read_in_constant_memory(tmp_path: Path) -> None:
    """20 000 entries that are not files (tarfile would keep every header it passes): memory stays flat."""
    directory = tarfile.TarInfo("d")
    directory.type = tarfile.DIRTYPE
    path = _tar(tmp_path / "many.tar", [(directory, b"")] * 20000 + [(tarfile.TarInfo("k.txt"), b"x")])
    tracemalloc.start()
    try:
        with path.open("rb") as file:
            assert [name for name, _ in tar_files(file, str(path))] == ["k.txt"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, peak


def test_a_sample_of_countless_files_is_refused(tmp_path: Path, caplog) -> None:
    members = [(tarfile.TarInfo(f"k.{index}.txt"), b"x") for index in range(MAX_SAMPLE_FILES + 1)]
    path = _tar(tmp_path / "wide.tar", members)
    with caplog.at_level(logging.WARNING):
        assert list(shard_samples(str(path))) == []
    assert f"sample 'k' has more than {MAX_SAMPLE_FILES} files" in caplog.text


def test_an_archive_cut_between_members_is_not_taken_for_its_end(tmp_path: Path, caplog) -> None:
    """A local shard cut exactly at a member boundary (no end marker): tarfile ends the archive there without a
    word; here the rest is named as cut, even without a manifest entry to compare with."""
    path, _ = _shard(tmp_path, 4)
    with tarfile.open(path) as tar:
        boundary = tar.getmembers()[4].offset
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:boundary])
    with caplog.at_level(logging.WARNING):
        assert len(list(shard_samples(str(cut)))) <= 1
    assert f"skipping unreadable data in shard {cut}" in caplog.text and "cut short" in caplog.text


def test_a_manifest_that_redirects_is_still_json_checked(tmp_path: Path) -> None:
    """An http->http redirect is followed (urllib's default, loopback only here) and its body checked like any."""
    body = json.dumps({"shards": "no"}).encode()
    target = _respond(f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n", lambda c, s: c.sendall(body))
    with raw_server(target) as final:
        head = f"HTTP/1.0 301 Moved\r\nLocation: {final}/manifest.json\r\nContent-Length: 0\r\n"
        with raw_server(_respond(head, lambda c, s: None)) as url:
            assert read_bytes(f"{url}/manifest.json", QUICK) == body


def test_every_reader_of_shard_members_takes_the_capped_reader(tmp_path: Path) -> None:
    """The tokenizer check's first meta.json and data prep's words from shards read tars through tar_files too:
    a 1.5 KB local shard whose meta.json is a 10 GB sparse file costs them no memory (tarfile alone: 10 GB)."""
    from data_prep.page_words import shard_words
    from layoutlmv3.pretraining.inputs import first_sample_tokenizer

    path = tmp_path / "shard-000000-000000.tar"
    path.write_bytes(_sparse_header("k.meta.json") + bytes(1024))
    tracemalloc.start()
    try:
        assert first_sample_tokenizer(str(path)) is None
        with pytest.raises(ValueError, match=f"{path}: not a readable data_prep shard .*sparse file"):
            shard_words(tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------- manifests built to hurt


def _manifest_with(root: Path, shards: list[dict]) -> Path:
    write_dataset(root, (1,), source="m")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"] = shards
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"samples": True}, "samples must be an integer"),
        ({"samples": 1.0}, "samples must be an integer"),
        ({"samples": 1e3}, "samples must be an integer"),
        ({"samples": 10**30}, "samples must be an integer >= 0, got 10+ \\(at most 2\\*\\*53\\)"),
        ({"samples": -1}, "samples must be an integer"),
        ({"samples": "5"}, "samples must be an integer"),
        ({"samples": 1, "bytes": 10**30}, "bytes must be an integer >= 0, got 10+ \\(at most 2\\*\\*53\\)"),
        ({"samples": 10**6, "bytes": 10240}, "1000000 samples cannot fit in 10240 bytes"),
        ({"samples": 1, "name": "shаrd-000000-000000.tar"}, "not a plain relative file name"),  # Cyrillic a
        ({"samples": 1, "name": "shard-000000\u200b-000000.tar"}, "not a plain relative file name"),  # zero width
        ({"samples": 1, "name": "ｓhard-000000-000000.tar"}, "not a plain relative file name"),  # fullwidth s
        ({"samples": 1, "name": "shard-٠٠٠٠٠٠-000000.tar"}, "not a plain relative file name"),  # Arabic digits
        ({"samples": 1, "name": "shard-000000-000000.ｔａｒ"}, "must end in .tar"),
    ],
    ids=[
        "bool", "float", "1e3", "huge", "negative", "string", "huge-bytes", "more-samples-than-bytes",
        "cyrillic", "zero-width", "fullwidth", "arabic-digits", "fullwidth-suffix",
    ],
)  # fmt: skip
def test_counts_and_names_that_only_look_right_are_refused(tmp_path: Path, entry: dict, message: str) -> None:
    shard = {"name": "shard-000000-000000.tar", **entry}
    root = _manifest_with(tmp_path / "m", [shard])
    with pytest.raises(ManifestError, match=message):
        list_shards(root)


def test_a_shard_listed_twice_is_refused(tmp_path: Path) -> None:
    """Read twice per epoch, its pages would silently weigh double."""
    entry = {"name": "train-000000.tar", "samples": 1}
    root = _manifest_with(tmp_path / "m", [entry, {"name": "other.tar", "samples": 1}, entry])
    with pytest.raises(ManifestError, match="shard train-000000.tar is listed twice"):
        list_shards(root)


def test_a_local_manifest_that_is_huge_or_not_a_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    """The remote cap holds locally too: a 300 MB (sparse) manifest.json is refused from its size, a FIFO named
    manifest.json (which would block the reader for ever) from its kind."""
    huge = tmp_path / "huge"
    huge.mkdir()
    with (huge / "manifest.json").open("wb") as file:
        file.truncate(MAX_SMALL_FILE_BYTES + 1)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "manifest.json")
    with pytest.raises(JsonFileError, match=f"{huge}/manifest.json is larger than {MAX_SMALL_FILE_BYTES} bytes"):
        list_shards(huge)
    with pytest.raises(JsonFileError, match=rf"{fifo}/manifest.json is a FIFO \(named pipe\), not a regular file"):
        list_shards(fifo)


def test_a_manifest_of_many_shards_loads_in_bounded_time(tmp_path: Path) -> None:
    """100 000 entries (a 15 MB manifest) in seconds; the 256 MiB cap bounds a manifest to about 1.7 million
    entries (about 16 s and 1 GB on a loaded 2-core machine, measured), refused past that."""
    entries = [{"name": f"shard-{index:06d}-000000.tar", "samples": 9, "bytes": 10**6} for index in range(100_000)]
    root = _manifest_with(tmp_path / "m", entries)
    shards, took = _timed(lambda: list_shards(root))
    assert len(shards) == 100_000 and shards[-1].url == f"{root}/shard-099999-000000.tar" and took < 10


def test_endless_headers_and_a_content_length_that_is_no_number_are_bounded(tmp_path: Path, caplog) -> None:
    """Header lines for ever: http.client stops at 100 headers (a failed attempt, named), long before the deadline.
    A Content-Length of `-5` or `lots` counts as none: the shard is read to its end and its samples are whole."""

    def endless(connection: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            connection.sendall(b"X-Again: and again\r\n")

    with raw_server(_respond("HTTP/1.0 200 OK", endless)) as url, caplog.at_level(logging.WARNING):
        got, took = _timed(lambda: list(shard_samples(f"{url}/s.tar", QUICK)))
    assert got == [] and took < QUICK.deadline_s and "got more than 100 headers" in caplog.text
    path, _ = _shard(tmp_path)
    data = path.read_bytes()
    for length in ("-5", "lots"):
        head = f"HTTP/1.0 200 OK\r\nContent-Length: {length}\r\n"
        with raw_server(_respond(head, lambda c, s: c.sendall(data))) as url:
            assert len(list(shard_samples(f"{url}/s.tar", QUICK, expected=3))) == 3


def test_a_pipe_read_in_a_process_with_many_open_files(tmp_path: Path) -> None:
    """A training process holds many descriptors (loader workers, sockets, logs): a command's pipe numbered past
    1024 is read like any (select() refuses such numbers; poll() does not)."""
    import resource

    path, shard = _shard(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("this machine allows fewer than 1200 open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    null = os.open(os.devnull, os.O_RDONLY)
    held = [os.dup(null) for _ in range(1100)]
    try:
        got = list(shard_samples(f"pipe:cat {path}", QUICK, 3, shard.bytes, shard.sha256))
        assert len(got) == 3
    finally:
        for descriptor in [null, *held]:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
