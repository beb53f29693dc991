"""Reading shards and manifests wherever they live: local paths, `http(s)://` URLs, and `pipe:` commands (e.g.
`pipe:aws s3 cp s3://bucket/train/shard-000000-000000.tar -`, `pipe:gsutil cat gs://...`), as webdataset names
them.

Remote reads fail transiently (a dropped connection, a throttled object store). A shard whose read fails is
opened again after an exponential back-off, and the samples it already gave are skipped, so the sample stream --
and with it the exact-resume position -- is the same as an undisturbed read. A shard that keeps failing is
skipped with a warning that says how many samples of it were read and how many shards were skipped so far:
never a silent loss. Local files are not retried (their corruption does not heal); their unreadable rest is
skipped with a warning, as before.

Remote reads can also stall: a server that accepts and never answers, one that trickles a byte now and then, a
command that never writes. Every attempt (at a shard, at a manifest) has a deadline on the total time spent
waiting for it (`RetryPolicy.deadline_s`, deadline.py); when it passes, the socket is shut down or the command's
process group killed, and the attempt counts as failed like any other.

A shard whose manifest entry records its size and sha256 is checked as its bytes pass (layoutlmv3.checksums):
another file under the shard's name (other content, more or fewer samples) is a damaged shard -- a failed attempt
for a remote one, logged and skipped for a local one. The last sample is held back until the check passes.

A shard's tar is data from elsewhere too: `tar_files`, the one tar reader of shards (the loader, the tokenizer
check, data prep's words from shards), refuses from the header a member over MAX_MEMBER_BYTES, a long-name or pax
header over MAX_TAR_HEADER_BYTES, a sparse member and an archive cut short (and the loader a sample of more than
MAX_SAMPLE_FILES files), so no shard makes a reader allocate what it declares. Redirects are followed to http(s)
only.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import itertools
import logging
import math
import os
import re
import select
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from layoutlmv3.checksums import StreamDigest
from layoutlmv3.data.deadline import Deadline, DeadlineExceeded  # noqa: F401 (DeadlineExceeded: for callers)
from layoutlmv3.json_files import MAX_JSON_BYTES, parse_json

logger = logging.getLogger(__name__)

REMOTE_PREFIXES = ("http://", "https://", "pipe:")
HTTP_TIMEOUT_S = 60.0  # one socket operation (connect, TLS handshake, one recv); the deadline bounds the attempt
MAX_SMALL_FILE_BYTES = MAX_JSON_BYTES  # the one cap of JSON from data (256 MiB): past it, a server sending for ever
# What one tar of samples may ask a reader to hold in memory (a member is read whole): far above any page's files,
# far below what a declared size of a hostile or broken tar (10 GB in a 1 KB file, a sparse member) would take.
MAX_MEMBER_BYTES = 1 << 26  # one file of a sample (a page image, its meta.json)
MAX_SAMPLE_FILES = 64  # files of one sample (a page has a handful)
MAX_TAR_HEADER_BYTES = 1 << 20  # a long name or pax extended header, which tarfile reads whole
_POLL_S = 0.2  # how often a read blocked on a pipe: command looks at its deadline
_skipped_shards = itertools.count(1)  # per process (each DataLoader worker counts its own)


@dataclass(frozen=True)
class RetryPolicy:
    """How often a remote read is tried, the back-off between tries (first_delay_s, doubled each time), and the
    deadline of one try: the seconds it may spend waiting on the server or command in all (not the time the
    consumer spends between samples), after which it is cut off and counts as failed."""

    attempts: int = 5
    first_delay_s: float = 2.0
    deadline_s: float = 600.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or not self.first_delay_s >= 0:
            raise ValueError(f"RetryPolicy needs attempts >= 1 and first_delay_s >= 0, got {self}")
        if not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise ValueError(f"RetryPolicy.deadline_s must be a positive number of seconds, got {self.deadline_s}")

    def delay(self, failures: int) -> float:
        return self.first_delay_s * 2 ** (failures - 1)


DEFAULT_RETRY = RetryPolicy()


class ShardMismatch(OSError):
    """A shard that is not the file its manifest entry describes (size, checksum or sample count)."""


class SourceTooLarge(ValueError):
    """A small file (a manifest) that goes on past MAX_SMALL_FILE_BYTES: not retried."""


class TarRefused(OSError):
    """A tar that cannot be read safely as shard samples: a member, sample or header past the memory caps above, a
    member kind no shard holds (sparse), or an archive cut short (a header incomplete or invalid, or no end
    marker) -- which tarfile itself would take for the end of the archive, silently dropping the rest."""


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_PREFIXES)


def open_stream(url: str, deadline_s: float = DEFAULT_RETRY.deadline_s) -> IO[bytes]:
    """A readable binary stream of `url` (a local path, an http(s) URL or a `pipe:` command's stdout); a remote
    one gets a deadline of `deadline_s` seconds of waiting in all, and must be closed (or abandoned)."""
    if url.startswith(("http://", "https://")):
        return _HttpStream(url, deadline_s)  # type: ignore[return-value]
    if url.startswith("pipe:"):
        return _PipeStream(url[len("pipe:") :], deadline_s)  # type: ignore[return-value]
    return open(url, "rb")  # noqa: SIM115 (closed by the caller)


def _watched_connection(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
    """`base` whose socket the deadline shuts down when it passes (a blocked recv then returns at once)."""

    class Watched(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.deadline = deadline

        def connect(self) -> None:
            """Connect (bounded by the socket timeout), then hand the socket to the deadline: urllib drops its own
            reference once the headers are in, while the body is still read through it."""
            super().connect()
            self.deadline.on_expiry(functools.partial(_shut_down, self.sock))

    return Watched


_WatchedHTTP = _watched_connection(http.client.HTTPConnection)
_WatchedHTTPS = _watched_connection(http.client.HTTPSConnection)


def _shut_down(sock: socket.socket) -> None:
    """End a connection under a reader blocked in recv (which then returns at once); a socket already closed
    raises (ignored), so a number reused by another file is never touched."""
    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: under TLS too, without a TLS goodbye


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTP, deadline=self.deadline), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_WatchedHTTPS, deadline=self.deadline), req, context=self._context)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are followed to http(s) URLs only, never to another scheme urllib would open (`ftp:`, where no
    deadline watches the socket; `file:` and `data:` are refused by urllib already): a server's answer never makes
    the reader open something other than a web resource."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(
                newurl, code, f"{msg} - a redirect to {newurl!r} is not followed (http and https only)", headers, fp
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _HttpStream:
    """An HTTP body read under a deadline (redirects and proxies as urllib handles them), that raises when the
    connection ends before Content-Length bytes (http.client returns b"" then, which a tar reader can mistake for
    the end of the archive when the cut falls between members)."""

    def __init__(self, url: str, deadline_s: float) -> None:
        self.url = url
        self.deadline = Deadline(deadline_s, url)
        handlers = (_WatchedHTTPHandler(self.deadline), _WatchedHTTPSHandler(self.deadline), _HttpOnlyRedirects())
        opener = urllib.request.build_opener(*handlers)
        try:
            with self.deadline.waiting():
                self.response = opener.open(url, timeout=min(HTTP_TIMEOUT_S, deadline_s))
        except BaseException as error:
            if isinstance(error, urllib.error.HTTPError):
                error.close()  # its connection (the error page unread): not left to the garbage collector
            self.deadline.close()
            raise
        self.declared_size: int | None = self.response.length  # Content-Length, when the server sends one

    def __repr__(self) -> str:
        return self.url

    def read(self, size: int = -1) -> bytes:
        with self.deadline.waiting():
            data = self.response.read(size)
            if not data and size != 0 and self.response.length:  # bytes still owed
                raise http.client.IncompleteRead(b"", self.response.length)
        return data

    def close(self) -> None:
        try:
            self.response.close()
        finally:
            self.deadline.close()

    def abandon(self) -> None:
        self.close()


class _PipeStream:
    """stdout of a shell command, in a process group of its own (killed whole: a pipeline's every process), under a
    deadline. Closing waits for it and turns a non-zero exit into an error. stderr goes to a temporary file (a
    pipe nobody reads would block a chatty command once 64 KB are written)."""

    def __init__(self, command: str, deadline_s: float) -> None:
        self.command = command
        self.deadline = Deadline(deadline_s, f"pipe:{command}")
        self.ended = False  # its stdout reached its end
        try:
            self.errors = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close/abandon)
            self.process = subprocess.Popen(  # noqa: S602 (the user's command; names from data are checked)
                command, shell=True, stdout=subprocess.PIPE, stderr=self.errors, start_new_session=True, bufsize=0
            )
        except BaseException:
            self.deadline.close()
            if hasattr(self, "errors"):
                self.errors.close()
            raise
        self.deadline.on_expiry(self._kill)
        self.poller = select.poll()
        self.poller.register(self.process.stdout, select.POLLIN)  # also wakes on POLLHUP/POLLERR: the end

    def __repr__(self) -> str:
        return f"pipe:{self.command}"

    def _kill(self) -> None:
        """SIGKILL to the command's process group (the group outlives its leader: never another process's)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def read(self, size: int = -1) -> bytes:
        """At most `size` bytes (one read of the pipe; all of it for -1). The wait for them looks at the deadline
        itself: killing the command's group does not end a read while a process outside it (one that left the
        group with setsid) still holds the pipe open."""
        if size < 0:
            return b"".join(iter(functools.partial(self.read, 1 << 20), b""))
        with self.deadline.waiting():
            while not self.deadline.expired:
                if self.poller.poll(_POLL_S * 1000):  # poll, not select: any descriptor number (select: < 1024)
                    data = self.process.stdout.read(size) or b""
                    self.ended = self.ended or (not data and size > 0)
                    return data
        return b""  # not reached: waiting() raises DeadlineExceeded once it has expired

    def close(self) -> None:
        try:
            self.process.stdout.close()
            with self.deadline.waiting():  # until it exits, left unreaped: its process group is still its own
                os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT)
            self._kill()  # what the command left running in the background
            code = self.process.wait()
            error = self._stderr() if code != 0 else ""
        finally:
            self._end()
        if code != 0:
            raise OSError(f"pipe command exited with {code}: {self.command}: {error}")

    def exit_problem(self) -> str | None:
        """The command's own failure (non-zero exit, its stderr), which explains a broken read better; None when
        it was cut off by the deadline (that is the explanation) or is still writing (the read was refused for
        what it wrote: no second spent waiting for an exit that is not coming)."""
        if self.deadline.expired:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1.0 if self.ended else 0.01)
        if self.process.returncode in (None, 0):
            return None
        return f"pipe command exited with {self.process.returncode}: {self.command}: {self._stderr()}"

    def abandon(self) -> None:
        """Stop reading early: end the command without caring how it exits."""
        try:
            self._kill()
            self.process.stdout.close()
            self.process.wait()
        finally:
            self._end()

    def _stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read().decode(errors="replace").strip()[-300:]

    def _end(self) -> None:
        """No process of the command, no watchdog and no file outlives the read."""
        if self.process.returncode is None:
            self._kill()
            self.process.wait()
        self.deadline.close()
        self.errors.close()


def read_bytes(url: str, retry: RetryPolicy = DEFAULT_RETRY, limit: int = MAX_SMALL_FILE_BYTES) -> bytes:
    """A whole small file (a manifest), with the same retries and deadline as shards; more than `limit` bytes is
    refused (SourceTooLarge), not retried."""
    for failures in itertools.count(1):
        try:
            stream = open_stream(url, retry.deadline_s)
            try:
                data = _read_at_most(stream, url, limit)
            except BaseException:
                _abandon(stream)
                raise
            stream.close()
            return data
        except SourceTooLarge:
            raise
        except Exception as error:
            if not is_remote(url) or failures >= retry.attempts:
                raise OSError(f"cannot read {url}: {error}") from error
            _log_retry(url, failures, retry, error)
    raise AssertionError("unreachable")


def _read_at_most(stream: IO[bytes], url: str, limit: int) -> bytes:
    parts, size = [], 0
    while chunk := stream.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise SourceTooLarge(f"{url} goes on past {limit} bytes: not a manifest (or a server that never stops)")
        parts.append(chunk)
    return b"".join(parts)


def read_text(url: str, retry: RetryPolicy = DEFAULT_RETRY) -> str:
    """A whole small file as UTF-8 text (see read_bytes)."""
    data = read_bytes(url, retry)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{url} is not UTF-8 text: {error}") from None


def read_json(url: str, retry: RetryPolicy = DEFAULT_RETRY) -> Any:
    """A small JSON file (a manifest) at `url`; JSON that does not parse (an HTML error page) is a JsonFileError
    naming the URL."""
    return parse_json(read_bytes(url, retry), url)


class _Verified:
    """A shard's byte stream checked against its manifest entry as it passes: a declared size (the file's, the
    Content-Length) that differs is refused before any sample; more bytes than recorded as soon as they come;
    the total size and sha256 once the stream has ended (`finish`)."""

    def __init__(self, stream: IO[bytes], url: str, size: int | None, sha256: str | None) -> None:
        self.stream, self.url, self.size, self.sha256 = stream, url, size, sha256
        self.digest = StreamDigest() if sha256 is not None else None
        self.count = 0
        declared = _declared_size(stream)
        if size is not None and declared is not None and declared != size:
            raise ShardMismatch(f"{url} is {declared} bytes, its manifest entry records {size}: not the same shard")

    def __repr__(self) -> str:
        return self.url

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        if self.digest is not None:
            self.digest.update(data)
        if self.size is not None and self.count > self.size:
            raise ShardMismatch(f"{self.url} goes on past the {self.size} bytes its manifest entry records")
        return data

    def finish(self) -> None:
        """Read what the tar reader left (the archive's end padding) and compare size and checksum. With a recorded
        size, reading stops there: bytes after it cannot change a sample, and waiting for an end of stream that a
        command's background child holds back would cost a deadline."""
        if self.size is None and self.digest is None:
            return
        while self.size is None or self.count < self.size:
            if not self.read(1 << 20 if self.size is None else min(1 << 20, self.size - self.count)):
                break
        if self.size is not None and self.count != self.size:
            raise ShardMismatch(f"{self.url} is {self.count} bytes, its manifest entry records {self.size}")
        if self.digest is not None and self.digest.hexdigest() != self.sha256:
            raise ShardMismatch(
                f"{self.url} has sha256 {self.digest.hexdigest()}, its manifest entry records {self.sha256}: "
                "not the shard the manifest describes"
            )


def _declared_size(stream: IO[bytes]) -> int | None:
    if isinstance(stream, _HttpStream):
        return stream.declared_size
    if isinstance(stream, _PipeStream):
        return None
    with contextlib.suppress(OSError, AttributeError, ValueError):
        return os.fstat(stream.fileno()).st_size
    return None


def shard_samples(
    url: str,
    retry: RetryPolicy = DEFAULT_RETRY,
    expected: int | None = None,
    size: int | None = None,
    sha256: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The samples of one shard (webdataset's grouping: `__key__`, `__url__`, one entry per file).

    A remote shard whose read fails is read again from the start, skipping the samples already given. The last
    sample is held back until the stream has ended cleanly (a command's exit 0, the whole HTTP body) and matches
    its manifest entry, because a cut inside it would yield it incomplete. `expected`, `size` and `sha256` are
    the manifest's sample count, byte size and checksum (each None when not recorded): a shard with other
    samples, bytes or content counts as a failed read. A consumer that stops early ends the read without retrying.
    """
    given = 0
    for failures in itertools.count(1):
        stream = None
        try:
            stream = open_stream(url, retry.deadline_s)
            checked = _Verified(stream, url, size, sha256)
            count, held = 0, None
            for sample in _grouped(checked, url):
                if held is not None:
                    count += 1
                    if count > given:
                        given += 1
                        yield from _yield_or_abandon(held, stream)
                held = sample
                if expected is not None and count + 1 > expected:
                    raise ShardMismatch(f"{url} holds more than the {expected} samples its manifest entry records")
            checked.finish()
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


def _grouped(stream: IO[bytes] | _Verified, url: str) -> Iterator[dict[str, Any]]:
    """webdataset's samples (files grouped by key) of the tar `stream`, read by `tar_files` within its caps."""
    from webdataset import tariterators  # here, not at the top: webdataset imports torch, data prep needs neither

    files = ({"fname": name, "data": data, "__url__": url} for name, data in _capped_samples(stream, url))
    return tariterators.group_by_keys(files)


def _capped_samples(stream: IO[bytes] | _Verified, url: str) -> Iterator[tuple[str, bytes]]:
    """The files of `stream` with at most MAX_SAMPLE_FILES in a row of one key (one sample)."""
    from webdataset import tariterators

    key, files = None, 0
    for name, data in tar_files(stream, url):
        prefix = tariterators.base_plus_ext(name)[0]
        key, files = prefix, (files + 1 if prefix == key else 1)
        if files > MAX_SAMPLE_FILES:
            raise TarRefused(f"{url}: sample {prefix!r} has more than {MAX_SAMPLE_FILES} files: not a shard's sample")
        yield name, data


_WEBDATASET_META = re.compile(r"__[^/]*__($|/)")  # names webdataset's reader skips (its own metadata)


_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE)
_HEADER_TYPES += (tarfile.SOLARIS_XHDTYPE,)


class _CheckedTarInfo(tarfile.TarInfo):
    """A tar header refused before tarfile reads what it declares: a long name or pax header over
    MAX_TAR_HEADER_BYTES, a sparse member (its holes are made of memory). A short, empty or invalid block where a
    header belongs is a cut, not the end (tarfile would end the archive there without a word)."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        if len(buf) != tarfile.BLOCKSIZE:
            raise TarRefused("the archive ends inside a header or without its end marker: cut short")
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.HeaderError as error:
            raise TarRefused(f"an invalid tar header ({error}): damaged or not a tar") from None

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise TarRefused(f"member {self.name!r} is a sparse file: no shard holds one")
        if self.type in _HEADER_TYPES and self.size > MAX_TAR_HEADER_BYTES:
            raise TarRefused(f"a tar header declaring {self.size} bytes (at most {MAX_TAR_HEADER_BYTES} are read)")
        return super()._proc_member(tarfile_)


def tar_files(
    stream: IO[bytes] | _Verified, where: str, select: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, bytes]]:
    """(name, content) of each regular file of the tar `stream` (as webdataset reads one: in order, nothing
    written to disk, its `__...__` names skipped), whose name passes `select`. The one tar reader of shards: a
    member over MAX_MEMBER_BYTES, a header over MAX_TAR_HEADER_BYTES, a sparse member or an archive cut short is a
    TarRefused naming `where`; tarfile's list of members is emptied as it goes (a million entries cost nothing)."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_CheckedTarInfo)  # noqa: SIM115 (closed below)
    except TarRefused as error:
        raise TarRefused(f"{where}: {error}") from None
    with tar:  # closes tarfile's own reader, never `stream`
        while (info := _next_member(tar, where)) is not None:
            tar.members.clear()
            name = info.name
            if not info.isreg() or _WEBDATASET_META.match(name) or (select is not None and not select(name)):
                continue
            if info.size > MAX_MEMBER_BYTES:
                raise TarRefused(
                    f"{where}: member {name!r} declares {info.size} bytes, more than a sample's file may hold "
                    f"({MAX_MEMBER_BYTES}): not read"
                )
            yield name, tar.extractfile(info).read()  # type: ignore[union-attr]


def _next_member(tar: tarfile.TarFile, where: str) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except TarRefused as error:
        raise TarRefused(f"{where}: {error}") from None


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
