"""Shards and their manifest read over HTTP from a real server on the loopback interface (one that drops
connections mid-shard, and one shard that never comes through) and through `pipe:` commands: retried with
back-off, the samples exactly those of a local read, a shard that keeps failing skipped and counted."""

from __future__ import annotations

import functools
import http.server
import logging
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from layoutlmv3.data import build_train_loader, list_shards
from layoutlmv3.data.remote import RetryPolicy
from tests.test_data_loader import _assert_same_batches, _keys, _write_dataset

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
    _write_dataset(root, COUNTS, source="web")
    _FlakyHandler.drop_first, _FlakyHandler.always_drop, _FlakyHandler.requests = Counter(), set(), Counter()
    _FlakyHandler.cut_at = {}
    handler = functools.partial(_FlakyHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
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
    _assert_same_batches(over_http, list(_exact(root)))
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
    _assert_same_batches(over_http, list(_exact(root)))
    assert "IncompleteRead" in caplog.text and "skipping" not in caplog.text


def test_a_consumer_that_stops_early_ends_the_read_without_a_retry(tmp_path: Path, caplog) -> None:
    from layoutlmv3.data.remote import shard_samples

    root = tmp_path / "shards"
    _write_dataset(root, (6,), source="early")
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
    _assert_same_batches(list(resumed), reference[2:])


def test_a_shard_that_keeps_failing_is_skipped_and_counted(server, caplog) -> None:
    url, root = server
    names = [shard.url.rsplit("/", 1)[-1] for shard in list_shards(root)]
    _FlakyHandler.always_drop.add(names[1])
    with caplog.at_level(logging.WARNING):
        keys = _keys(list(_exact(f"{url}/manifest.json")))
    assert _FlakyHandler.requests[names[1]] == FAST_RETRY.attempts
    assert f"skipping the rest of shard {url}/{names[1]} after 3 failed attempts" in caplog.text
    assert "shard(s) skipped so far" in caplog.text
    lost = [key for key in _keys(list(_exact(root))) if key not in keys]
    assert lost and all(key.startswith("web__1_pdf") for key in lost)  # only the failing shard's samples


def test_pipe_commands_read_shards_and_a_failing_command_is_retried(tmp_path: Path, caplog) -> None:
    root = tmp_path / "shards"
    _write_dataset(root, COUNTS, source="pipe")
    local = [shard.url for shard in list_shards(root)]
    piped = [f"pipe:cat {path}" for path in local]
    _assert_same_batches(list(_exact(piped)), list(_exact(local)))
    with caplog.at_level(logging.WARNING):
        keys = _keys(list(_exact([*piped[:1], "pipe:echo no such object >&2; exit 3"])))
    assert keys and "pipe command exited with 3" in caplog.text and "after 3 failed attempts" in caplog.text


def test_the_tokenizer_of_a_remote_manifest_is_checked(server) -> None:
    from layoutlmv3.tokenizer import train_bpe
    from layoutlmv3.training.inputs import check_shards_tokenizer

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
        _assert_same_batches(list(_exact(f"{url}/manifest.json")), list(_exact(root)))
    finally:
        httpd.shutdown()
        httpd.server_close()
