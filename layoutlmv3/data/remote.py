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

import itertools
import json
import logging
import subprocess
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
        return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)  # noqa: S310 (the user's own URLs)
    if url.startswith("pipe:"):
        return _PipeStream(url[len("pipe:") :])
    return open(url, "rb")  # noqa: SIM115 (closed by the caller)


class _PipeStream:
    """stdout of a shell command; closing waits for it and turns a non-zero exit into an error."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S602

    def read(self, size: int = -1) -> bytes:
        return self.process.stdout.read(size)

    def close(self) -> None:
        self.process.stdout.close()
        code = self.process.wait()
        error = self.process.stderr.read().decode(errors="replace").strip()
        self.process.stderr.close()
        if code != 0:
            raise OSError(f"pipe command exited with {code}: {self.command}: {error[-300:]}")


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


def shard_samples(url: str, retry: RetryPolicy = DEFAULT_RETRY) -> Iterator[dict[str, Any]]:
    """The samples of one shard (webdataset's grouping: `__key__`, `__url__`, one entry per file), read again
    from the start after a failure (remote shards), skipping the samples already given."""
    given = 0
    for failures in itertools.count(1):
        try:
            stream = open_stream(url)
            try:
                for index, sample in enumerate(_grouped(stream, url)):
                    if index >= given:
                        given += 1
                        yield sample
            finally:
                stream.close()
            return
        except Exception as error:  # dropped connections raise http.client/tarfile/OS errors alike
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
