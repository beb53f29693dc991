"""Reading shards and manifests wherever they live: local paths, `http(s)://` URLs, and `pipe:` commands (e.g.
`pipe:aws s3 cp s3://bucket/train/shard-000000-000000.tar -`, `pipe:gsutil cat gs://...`), as webdataset names
them.

Remote reads fail transiently (a dropped connection, a throttled object store). A shard whose read fails is
opened again after an exponential back-off, and the samples it already gave are skipped, so the sample stream --
and with it the exact-resume position -- is the same as an undisturbed read. A shard that keeps failing is
skipped with a warning that says how many samples of it were read and how many shards were skipped so far:
never a silent loss. Local files are not retried (their corruption does not heal); their unreadable rest is
skipped with a warning, as before.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import logging
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from webdataset import tariterators

logger = logging.getLogger(__name__)

REMOTE_PREFIXES = ("http://", "https://", "pipe:")
HTTP_TIMEOUT_S = 60.0
_skipped_shards = itertools.count(1)  # per process (each DataLoader worker counts its own)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a remote read is tried, and the back-off between tries (first_delay_s, doubled each time)."""

    attempts: int = 5
    first_delay_s: float = 2.0

    def delay(self, failures: int) -> float:
        return self.first_delay_s * 2 ** (failures - 1)


DEFAULT_RETRY = RetryPolicy()


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_PREFIXES)


def open_stream(url: str) -> IO[bytes]:
    """A readable binary stream of `url` (a local path, an http(s) URL or a `pipe:` command's stdout)."""
    if url.startswith(("http://", "https://")):
        return _CheckedResponse(urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S))  # noqa: S310 (user's URLs)
    if url.startswith("pipe:"):
        return _PipeStream(url[len("pipe:") :])
    return open(url, "rb")  # noqa: SIM115 (closed by the caller)


class _CheckedResponse:
    """An HTTP body that raises when the connection ends before Content-Length bytes (http.client returns b""
    then, which a tar reader can mistake for the end of the archive when the cut falls between members)."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.response = response

    def read(self, size: int = -1) -> bytes:
        data = self.response.read(size)
        if not data and size != 0 and self.response.length:  # bytes still owed
            raise http.client.IncompleteRead(b"", self.response.length)
        return data

    def close(self) -> None:
        self.response.close()

    def abandon(self) -> None:
        self.response.close()


class _PipeStream:
    """stdout of a shell command; closing waits for it and turns a non-zero exit into an error. stderr goes to a
    temporary file (a pipe nobody reads would block a chatty command once 64 KB are written)."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close/abandon)
        self.process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=self.errors)  # noqa: S602

    def read(self, size: int = -1) -> bytes:
        return self.process.stdout.read(size)

    def close(self) -> None:
        self.process.stdout.close()
        code = self.process.wait()
        self.errors.seek(0)
        error = self.errors.read().decode(errors="replace").strip()
        self.errors.close()
        if code != 0:
            raise OSError(f"pipe command exited with {code}: {self.command}: {error[-300:]}")

    def exit_problem(self) -> str | None:
        """The command's own failure (non-zero exit, its stderr), which explains a broken read better."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1.0)
        if self.process.returncode in (None, 0):
            return None
        self.errors.seek(0)
        error = self.errors.read().decode(errors="replace").strip()
        return f"pipe command exited with {self.process.returncode}: {self.command}: {error[-300:]}"

    def abandon(self) -> None:
        """Stop reading early: end the command without caring how it exits."""
        self.process.kill()
        self.process.stdout.close()
        self.process.wait()
        self.errors.close()


def read_text(url: str, retry: RetryPolicy = DEFAULT_RETRY) -> str:
    """A whole small file (a manifest), with the same retries as shards."""
    for failures in itertools.count(1):
        try:
            stream = open_stream(url)
            try:
                return stream.read().decode("utf-8")
            finally:
                stream.close()
        except Exception as error:
            if not is_remote(url) or failures >= retry.attempts:
                raise OSError(f"cannot read {url}: {error}") from error
            _log_retry(url, failures, retry, error)
    raise AssertionError("unreachable")


def read_json(url: str, retry: RetryPolicy = DEFAULT_RETRY) -> Any:
    return json.loads(read_text(url, retry))


def shard_samples(
    url: str, retry: RetryPolicy = DEFAULT_RETRY, expected: int | None = None
) -> Iterator[dict[str, Any]]:
    """The samples of one shard (webdataset's grouping: `__key__`, `__url__`, one entry per file).

    A remote shard whose read fails is read again from the start, skipping the samples already given. The last
    sample is held back until the stream has ended cleanly (a command's exit 0, the whole HTTP body), because a
    cut inside it would yield it incomplete; and a shard ending with fewer samples than `expected` (the manifest's
    count) counts as a failed read. A consumer that stops early ends the read without retrying.
    """
    given = 0
    for failures in itertools.count(1):
        stream = None
        try:
            stream = open_stream(url)
            count, held = 0, None
            for sample in _grouped(stream, url):
                if held is not None:
                    count += 1
                    if count > given:
                        given += 1
                        yield from _yield_or_abandon(held, stream)
                held = sample
            stream, closing = None, stream
            closing.close()  # a command's non-zero exit raises here
            count += held is not None
            if expected is not None and count < expected:
                raise OSError(f"the shard ended after {count} of its {expected} samples")
            if held is not None and count > given:
                given += 1
                yield held
            return
        except Exception as caught:  # dropped connections raise http.client/tarfile/OS errors alike
            problem = stream.exit_problem() if isinstance(stream, _PipeStream) else None
            error = OSError(problem) if problem else caught  # a command's own failure explains a broken read better
            if stream is not None:
                _abandon(stream)
            if not is_remote(url):
                logger.warning("skipping unreadable data in shard %s: %s", url, error)
                return
            if failures >= retry.attempts:
                logger.warning(
                    "skipping the rest of shard %s after %d failed attempts (%d samples read; %d shard(s) skipped so "
                    "far by this reader): %s",
                    url,
                    failures,
                    given,
                    next(_skipped_shards),
                    error,
                )
                return
            _log_retry(url, failures, retry, error)


def _yield_or_abandon(sample: dict[str, Any], stream: Any) -> Iterator[dict[str, Any]]:
    try:
        yield sample
    except GeneratorExit:  # the consumer stopped: end the read quietly (a killed command is not a failure)
        _abandon(stream)
        raise


def _abandon(stream: Any) -> None:
    with contextlib.suppress(Exception):
        (stream.abandon if hasattr(stream, "abandon") else stream.close)()


def _grouped(stream: IO[bytes], url: str) -> Iterator[dict[str, Any]]:
    files = tariterators.tar_file_iterator(stream)
    return tariterators.group_by_keys({**item, "__url__": url} for item in files)


def _log_retry(url: str, failures: int, retry: RetryPolicy, error: Exception) -> None:
    delay = retry.delay(failures)
    logger.warning(
        "reading %s failed (attempt %d of %d): %s: %s; retrying in %.1f s",
        url,
        failures,
        retry.attempts,
        type(error).__name__,
        " ".join(str(error).split())[:200],
        delay,
    )
    time.sleep(delay)
