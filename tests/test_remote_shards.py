"""Shards and their manifest read over HTTP from a real server on the loopback interface (one that drops
connections mid-shard, and one shard that never comes through) and through `pipe:` commands: retried with
back-off, the samples exactly those of a local read, a shard that keeps failing skipped and counted. Servers that
never answer or trickle, and commands that never write, fail each attempt at its deadline; a remote shard that is
not the file its manifest entry describes fails its attempts too."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import logging
import socket
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layoutlmv3.data import build_train_loader, list_shards
from layoutlmv3.data.remote import RetryPolicy
from tests.raw_servers import alive, deadline_threads, raw_server
from tests.shard_files import assert_same_batches, batch_keys, write_dataset

FAST_RETRY = RetryPolicy(attempts=3, first_delay_s=0.01)
COUNTS = (5, 4, 6, 3)


class _FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; paths in `drop_first` lose their connection half-way through the body for that many
    requests, paths in `always_drop` on every request."""

    drop_first: Counter = Counter()
    always_drop: set[str] = set()
    cut_at: dict[str, int] = {}  # path -> byte offset the first response of it stops at
    requests: Counter = Counter()

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def copyfile(self, source, outputfile) -> None:
        name = self.path.rsplit("/", 1)[-1]
        type(self).requests[name] += 1
        if name in self.always_drop or self.drop_first[name] > 0 or name in self.cut_at:
            self.drop_first[name] -= 1
            data = source.read()
            outputfile.write(data[: self.cut_at.pop(name, len(data) // 2)])
            outputfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the peer sees the body end early
            return
        super().copyfile(source, outputfile)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "shards"
    write_dataset(root, COUNTS, source="web")
    _FlakyHandler.drop_first, _FlakyHandler.always_drop, _FlakyHandler.requests = Counter(), set(), Counter()
    _FlakyHandler.cut_at = {}
    handler = functools.partial(_FlakyHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.handle_error = lambda request, address: None  # a client that hangs up early (as tests make it) is no news
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def _exact(source: object, **kwargs: object):
    return build_train_loader(source, 2, num_workers=0, seed=2, shuffle_buffer=4, resampled=False, retry=FAST_RETRY)


def test_a_manifest_and_shards_over_http_survive_dropped_connections(server, caplog) -> None:
    url, root = server
    names = [shard.url.rsplit("/", 1)[-1] for shard in list_shards(root)]
    _FlakyHandler.drop_first.update({names[0]: 1, names[2]: 2})  # two shards drop the connection, then recover
    remote = list_shards(f"{url}/manifest.json")
    assert [shard.url for shard in remote] == [f"{url}/{name}" for name in names]
    assert [shard.samples for shard in remote] == list(COUNTS)
    with caplog.at_level(logging.WARNING):
        over_http = list(_exact(f"{url}/manifest.json"))
    assert_same_batches(over_http, list(_exact(root)))
    assert _FlakyHandler.requests[names[0]] == 2 and _FlakyHandler.requests[names[2]] == 3
    assert caplog.text.count("failed (attempt") == 3 and "skipping" not in caplog.text


def test_a_connection_cut_between_tar_members_is_not_taken_for_the_end(server, caplog) -> None:
    """Cut exactly at a member's header: to a tar reader that looks like a clean end. The missing body bytes (and
    the manifest's sample count) say otherwise: the shard is read again, nothing is lost."""
    url, root = server
    shard = list_shards(root)[2]
    with tarfile.open(shard.url) as tar:
        boundary = tar.getmembers()[len(tar.getmembers()) // 2].offset
    _FlakyHandler.cut_at[shard.url.rsplit("/", 1)[-1]] = boundary
    with caplog.at_level(logging.WARNING):
        over_http = list(_exact(f"{url}/manifest.json"))
    assert_same_batches(over_http, list(_exact(root)))
    assert "IncompleteRead" in caplog.text and "skipping" not in caplog.text


def test_a_consumer_that_stops_early_ends_the_read_without_a_retry(tmp_path: Path, caplog) -> None:
    from layoutlmv3.data.remote import shard_samples

    root = tmp_path / "shards"
    write_dataset(root, (6,), source="early")
    samples = shard_samples(f"pipe:cat {list_shards(root)[0].url}", FAST_RETRY)
    with caplog.at_level(logging.WARNING):
        next(samples)
        samples.close()  # what a loader does at the end of a resampled epoch
    assert "failed (attempt" not in caplog.text


def test_resume_over_http_continues_with_the_same_batches(server) -> None:
    url, _ = server
    reference = list(_exact(f"{url}/manifest.json"))
    original = _exact(f"{url}/manifest.json")
    iterator = iter(original)
    next(iterator), next(iterator)
    resumed = _exact(f"{url}/manifest.json")
    resumed.load_state_dict(original.state_dict())
    assert_same_batches(list(resumed), reference[2:])


def test_a_shard_that_keeps_failing_is_skipped_and_counted(server, caplog) -> None:
    url, root = server
    names = [shard.url.rsplit("/", 1)[-1] for shard in list_shards(root)]
    _FlakyHandler.always_drop.add(names[1])
    with caplog.at_level(logging.WARNING):
        keys = batch_keys(list(_exact(f"{url}/manifest.json")))
    assert _FlakyHandler.requests[names[1]] == FAST_RETRY.attempts
    assert f"skipping the rest of shard {url}/{names[1]} after 3 failed attempts" in caplog.text
    assert "shard(s) skipped so far" in caplog.text
    lost = [key for key in batch_keys(list(_exact(root))) if key not in keys]
    assert lost and all(key.startswith("web__1_pdf") for key in lost)  # only the failing shard's samples


def test_pipe_commands_read_shards_and_a_failing_command_is_retried(tmp_path: Path, caplog) -> None:
    root = tmp_path / "shards"
    write_dataset(root, COUNTS, source="pipe")
    local = [shard.url for shard in list_shards(root)]
    piped = [f"pipe:cat {path}" for path in local]
    assert_same_batches(list(_exact(piped)), list(_exact(local)))
    with caplog.at_level(logging.WARNING):
        keys = batch_keys(list(_exact([*piped[:1], "pipe:echo no such object >&2; exit 3"])))
    assert keys and "pipe command exited with 3" in caplog.text and "after 3 failed attempts" in caplog.text


def test_the_tokenizer_of_a_remote_manifest_is_checked(server) -> None:
    from layoutlmv3.pretraining.inputs import check_shards_tokenizer
    from layoutlmv3.tokenizer import train_bpe

    url, _ = server
    with pytest.raises(ValueError, match=f"{url}/manifest.json were tokenized with tokenizer test"):
        check_shards_tokenizer(f"{url}/manifest.json", train_bpe(["a", "b"] * 5, vocab_size=300))


def test_https_with_the_servers_certificate_trusted(server, tmp_path: Path, monkeypatch) -> None:
    """The same shards over TLS (a self-signed certificate for 127.0.0.1, trusted through SSL_CERT_FILE), with one
    dropped connection on the way."""
    import shutil as _shutil
    import ssl
    import subprocess

    if _shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    _, root = server
    handler = functools.partial(_FlakyHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        url = f"https://127.0.0.1:{httpd.server_address[1]}"
        _FlakyHandler.drop_first.update({list_shards(root)[1].url.rsplit("/", 1)[-1]: 1})
        assert_same_batches(list(_exact(f"{url}/manifest.json")), list(_exact(root)))
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------- deadlines: stalled servers and commands


DEADLINE = RetryPolicy(attempts=2, first_delay_s=0.01, deadline_s=1.0)


def _never_answer(connection: socket.socket, stop: threading.Event) -> None:
    with connection:
        stop.wait()


def _trickle(connection: socket.socket, stop: threading.Event) -> None:
    """Headers at once, then a byte of the body every 0.25 s: no single recv ever times out."""
    with connection:
        connection.recv(65536)
        connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        while not stop.wait(0.25):
            try:
                connection.sendall(b"\0")
            except OSError:
                return


@pytest.mark.parametrize("answer", [_never_answer, _trickle], ids=["never-answers", "trickles"])
def test_a_stalled_server_fails_each_attempt_at_its_deadline_then_the_shard_is_skipped(answer, caplog) -> None:
    from layoutlmv3.data.remote import read_json, shard_samples

    with raw_server(answer) as url, caplog.at_level(logging.WARNING):
        started = time.monotonic()
        assert list(shard_samples(f"{url}/train-000000.tar", DEADLINE, expected=4)) == []
        took = time.monotonic() - started
        assert 2 * DEADLINE.deadline_s <= took < 2 * DEADLINE.deadline_s + 3
        assert caplog.text.count("DeadlineExceeded") == 1  # the first attempt, retried; the second ends the shard
        assert f"skipping the rest of shard {url}/train-000000.tar after 2 failed attempts" in caplog.text
        started = time.monotonic()
        with pytest.raises(OSError, match=f"cannot read {url}/manifest.json: .*no complete answer after 1 s"):
            read_json(f"{url}/manifest.json", DEADLINE)  # a manifest: the same deadline, the same retries
        assert time.monotonic() - started < 2 * DEADLINE.deadline_s + 3
    assert not deadline_threads()


def test_a_pipe_command_that_never_writes_is_killed_with_its_children_at_the_deadline(tmp_path: Path, caplog) -> None:
    from layoutlmv3.data.remote import shard_samples

    pids = tmp_path / "pids"
    command = f"pipe:sleep 1000 & echo $! >> {pids}; echo $$ >> {pids}; wait"
    with caplog.at_level(logging.WARNING):
        started = time.monotonic()
        assert list(shard_samples(command, DEADLINE)) == []
        assert time.monotonic() - started < 2 * DEADLINE.deadline_s + 3
    assert "DeadlineExceeded" in caplog.text and "after 2 failed attempts" in caplog.text
    started_pids = [int(pid) for pid in pids.read_text().split()]
    assert len(started_pids) == 4  # two attempts, a shell and its sleep each
    gone_by = time.monotonic() + 10  # SIGKILL is asynchronous: a loaded machine schedules the dying child later
    while [pid for pid in started_pids if alive(pid)] and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not [pid for pid in started_pids if alive(pid)]
    assert not deadline_threads()


def test_the_deadline_counts_waiting_not_the_consumers_time(tmp_path: Path) -> None:
    """A reader paused between samples (the training step) is not waiting on the source: a shard read slowly by
    its consumer is read whole, even past the deadline in wall time."""
    from layoutlmv3.data.remote import shard_samples

    root = tmp_path / "shards"
    write_dataset(root, (4,), source="slow")
    url = f"pipe:cat {list_shards(root)[0].url}"
    samples = []
    for sample in shard_samples(url, RetryPolicy(attempts=1, first_delay_s=0, deadline_s=0.5), expected=4):
        samples.append(sample["__key__"])
        time.sleep(0.3)
    assert len(samples) == 4


def test_the_deadline_is_a_config_setting() -> None:
    from layoutlmv3.pretraining.run_config import DataSection

    assert DataSection(remote_deadline_s=30).remote_deadline_s == 30
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="data.remote_deadline_s must be a positive number"):
            DataSection(remote_deadline_s=bad)


# ---------------------------------------------------------------- records: a remote shard checked as it streams


def test_a_remote_shard_other_than_its_manifest_entry_is_retried_then_skipped(server, caplog) -> None:
    url, root = server
    shards = list_shards(root)
    changed = Path(shards[1].url)
    data = changed.read_bytes()
    at = data.rindex(b'"w0"')
    changed.write_bytes(data[:at] + b'"x0"' + data[at + 4 :])  # same name and size, other content
    with caplog.at_level(logging.WARNING):
        keys = batch_keys(list(_exact(f"{url}/manifest.json")))
    name = changed.name
    assert _FlakyHandler.requests[name] == FAST_RETRY.attempts
    assert f"skipping the rest of shard {url}/{name} after 3 failed attempts" in caplog.text
    assert "ShardMismatch" in caplog.text and "sha256" in caplog.text
    assert len([key for key in keys if key.startswith("web__1_pdf")]) == COUNTS[1] - 1  # the last one never given


def test_a_remote_shard_of_another_size_fails_before_any_sample(server, caplog) -> None:
    from layoutlmv3.data.remote import shard_samples

    url, root = server
    shard = list_shards(root)[0]
    Path(shard.url).write_bytes(Path(shard.url).read_bytes() + bytes(10240))  # a longer file: its Content-Length
    with caplog.at_level(logging.WARNING):
        got = list(shard_samples(f"{url}/{Path(shard.url).name}", FAST_RETRY, shard.samples, shard.bytes, shard.sha256))
    assert got == [] and f"its manifest entry records {shard.bytes}" in caplog.text


def test_a_remote_manifest_that_is_a_web_page_is_named(server) -> None:
    from layoutlmv3.json_files import JsonFileError

    url, root = server
    (root / "manifest.json").write_text("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>")
    with pytest.raises(JsonFileError, match=f"{url}/manifest.json is not valid JSON .*HTML page"):
        list_shards(f"{url}/manifest.json")


# ---------------------------------------------------------------- every reader: the image tokenizer, the checks


def _serve_manifest_only(manifest: bytes) -> Callable[[socket.socket, threading.Event], None]:
    """Answers GET /manifest.json with `manifest`; any other request (a shard) is accepted and never answered."""

    def answer(connection: socket.socket, stop: threading.Event) -> None:
        with connection:
            request = connection.recv(65536)
            if b" /manifest.json " in request.split(b"\r\n", 1)[0]:
                head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(manifest)}\r\n\r\n".encode()
                connection.sendall(head + manifest)
                return
            stop.wait()

    return answer


def test_the_image_tokenizer_reads_shards_through_the_loaders_checked_path(tmp_path: Path, caplog) -> None:
    """A shard other than its manifest entry (same name and size, other content) is damage for the image
    tokenizer's pages too: its last sample is never given and the mismatch is named."""
    from layoutlmv3.pretraining.image_tokenizer_data import DataConfig, image_source

    root = tmp_path / "shards"
    write_dataset(root, (3, 3), source="tok")
    changed = Path(list_shards(root)[1].url)
    data = changed.read_bytes()
    at = data.rindex(b'"w0"')
    changed.write_bytes(data[:at] + b'"x0"' + data[at + 4 :])
    source = image_source(DataConfig(shards=str(root)))
    assert source.records[str(changed)].sha256 is not None
    with caplog.at_level(logging.WARNING):
        keys = [key for key, _, _ in source.raw(source.items, lambda key: True)]
    assert len([key for key in keys if key.startswith("tok__0_pdf")]) == 3
    assert len([key for key in keys if key.startswith("tok__1_pdf")]) == 2  # the last one held back, then refused
    assert f"skipping unreadable data in shard {changed}" in caplog.text and "sha256" in caplog.text


def test_the_image_tokenizer_takes_its_remote_attempts_and_deadline_from_the_config(tmp_path: Path, caplog) -> None:
    from layoutlmv3.pretraining.image_tokenizer_data import DataConfig, image_source

    root = tmp_path / "shards"
    write_dataset(root, (2,), source="tok")
    settings = {"remote_attempts": 2, "remote_retry_s": 0.01, "remote_deadline_s": 0.5}
    with raw_server(_serve_manifest_only((root / "manifest.json").read_bytes())) as url:
        source = image_source(DataConfig(shards=f"{url}/manifest.json", **settings))
        assert source.items == (f"{url}/train-000000.tar",) and source.retry == RetryPolicy(2, 0.01, 0.5)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            assert list(source.raw(source.items, lambda key: True)) == []
        assert time.monotonic() - started < 2 * 0.5 + 3
        assert f"skipping the rest of shard {url}/train-000000.tar after 2 failed attempts" in caplog.text
    with raw_server(_never_answer) as url:
        started = time.monotonic()
        with pytest.raises(OSError, match="no complete answer after 0.5 s"):
            image_source(DataConfig(shards=f"{url}/manifest.json", **settings))
        assert time.monotonic() - started < 2 * 0.5 + 3
    for bad in ({"remote_deadline_s": 0}, {"remote_deadline_s": float("nan")}, {"remote_attempts": 0}):
        with pytest.raises(ValueError, match="data.remote_"):
            DataConfig(shards=str(root), **bad)


def test_the_tokenizer_check_and_the_loader_read_a_remote_manifest_with_the_configs_deadline(caplog) -> None:
    from layoutlmv3.pretraining.inputs import check_train_shards_tokenizer
    from layoutlmv3.pretraining.run_config import DataSection, RunConfig
    from layoutlmv3.tokenizer import train_bpe

    tokenizer = train_bpe(["a", "b"] * 5, vocab_size=300)
    with raw_server(_never_answer) as url:
        data = DataSection(train_shards=f"{url}/manifest.json", remote_attempts=2, remote_retry_s=0.01)
        config = RunConfig(data=dataclasses.replace(data, remote_deadline_s=0.5))
        started = time.monotonic()
        with pytest.raises(OSError, match=f"cannot read {url}/manifest.json: .*no complete answer after 0.5 s"):
            check_train_shards_tokenizer(config, tokenizer)
        assert time.monotonic() - started < 2 * 0.5 + 3
        started = time.monotonic()
        with pytest.raises(OSError, match="no complete answer after 1 s"):
            build_train_loader(f"{url}/manifest.json", 2, num_workers=0, retry=DEADLINE)
        assert time.monotonic() - started < 2 * DEADLINE.deadline_s + 3


def test_a_call_that_fails_once_the_budget_is_spent_is_named_a_deadline_whichever_fired_first() -> None:
    """A socket timeout equal to the budget can end the recv a hair before the watchdog marks the deadline (seen
    under load: "timed out" instead of the deadline's message): the failure is the deadline's all the same, while a
    call that succeeds late keeps its data. The watchdog is stopped here so only the call's own timeout fires."""
    from layoutlmv3.data.deadline import Deadline, DeadlineExceeded

    deadline = Deadline(0.2, "http://127.0.0.1:1/x.tar")
    deadline.close()  # no watchdog: the race's other order, made certain
    with pytest.raises(DeadlineExceeded, match="no complete answer after 0.2 s"), deadline.waiting():
        time.sleep(0.25)
        raise TimeoutError("timed out")
    late = Deadline(0.2, "late")
    late.close()
    with late.waiting():
        time.sleep(0.25)
        data = b"arrived"
    assert data == b"arrived"
