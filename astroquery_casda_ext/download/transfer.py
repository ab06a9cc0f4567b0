"""The transfer loop of one file: stream into ``<name>.part``, resume, bound, verify, rename.

One `transfer_file` call per file.  The ``.part`` is opened once (exclusively, never
through a link: `naming.open_part`) and held for the whole call; every attempt writes
through that descriptor and `verify.Sink` hashes what was written, so the checksum that
decides COMPLETE is the checksum of the file that is renamed.

Resuming
    A ``.part`` is continued with ``Range`` plus ``If-Range`` carrying the validator (strong
    ``ETag``, else ``Last-Modified``) of the response it came from.  The validator is kept
    on the ``.part`` itself (an extended attribute, so it cannot be separated from its
    bytes), or in ``<name>.part.validator`` where the file system has no extended
    attributes.  A server whose file changed answers 200 with the new file, which
    replaces the partial one.  A ``.part`` with no validator is continued only when a
    ``.checksum`` will catch a splice; otherwise it is fetched again from zero.

Bounds
    Every retry and every restart from zero (416, a 206 at the wrong offset or of another
    version) is counted by the transport's `~astroquery_casda_ext.transport.RetryState`:
    one policy, one backoff, one cap.  A body longer than the size announced (the
    ``.checksum``, DataLink, or ``Content-Length``) is cut and the file failed; with no
    size announced anywhere, ``max_unannounced`` bytes are the most accepted.  An attempt
    must average at least ``min_rate`` bytes per second after ``grace`` seconds, so a
    trickle ends with an error naming the file and the rate.

Content coding
    Files are asked for with ``Accept-Encoding: identity``.  A server that encodes the body
    anyway (gzip or deflate) has it decoded as it is read (`_DecodedBody`): the file is
    written, hashed and bounded as its decoded bytes, so a gzip bomb is cut at the size
    announced like any long body, and the compressed bytes are never kept as the file.
    Other codings are refused.
"""
import errno
import json
import os
import time
import zlib
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..checksum import ChecksumAccumulator
from ..errors import ChecksumMismatchError, DownloadError, UnsafeFilenameError, redact_url
from ..errors import package_logger
from ..transport import Pacing, RetryPolicy
from . import naming
from .http import (TRANSPORT_ERRORS, Fatal, Restart, SessionSpec, Transient, attempts_text, content_length,
                   describe, fetch_small, open_stream, parse_content_range, read_expected, worker_session)
from .manifest import ChecksumStatus, FileResult, FileStatus
from .naming import ERROR_FILE, PART_SUFFIX, VALIDATOR_SUFFIX, parse_content_disposition
from .verify import Sink, hash_prefix, matches

__all__ = []

log = package_logger(__name__.rsplit(".", 1)[0])

#: Error files carry one message; the manifest quotes at most this many characters of it.
MAX_ERROR_TEXT = 2000
#: Extended attribute of a ``.part`` holding its resume validator.
_XATTR = "user.casda.validator"
#: Longest a received block waits in memory before it is written.
FLUSH_SECONDS = 0.25


@dataclass(frozen=True)
class TransferConfig:
    """Settings of a transfer, shipped with every task (picklable)."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | tuple = 30.0        #: seconds to connect and between bytes read
    chunk_size: int = 8 << 20            #: bytes read and written per step (bounds memory)
    session: SessionSpec = field(default_factory=SessionSpec)   #: for workers without our session
    #: Write and hash on two helper threads, overlapping the receiving: worth it only with idle cores.
    hash_in_thread: bool = True
    #: Slowest average rate (bytes per second) an attempt may keep after ``grace`` seconds; 0: no limit.
    min_rate: float = 1000.0
    #: Seconds an attempt may take before ``min_rate`` applies.
    grace: float = 60.0
    #: Most bytes accepted for a file whose size nothing announced (no checksum, DataLink or length).
    max_unannounced: int = 1 << 40


class Hooks:
    """A local worker's callbacks: progress, cancellation, time, name claims (not picklable)."""

    def __init__(self, report=None, cancel=None, sleep=None, clock=None, claims=None):
        self._report, self._cancel, self._sleep = report, cancel, sleep
        self._clock, self.claims = clock, claims

    def report(self, event, index, value):
        if self._report is not None:
            self._report(event, index, value)

    def cancelled(self):
        return self._cancel is not None and self._cancel.is_set()

    def cancel(self):
        if self._cancel is not None:
            self._cancel.set()

    def wait(self, seconds):
        if self._sleep is not None:
            self._sleep(seconds)
        elif self._cancel is not None:
            self._cancel.wait(seconds)   # returns early when the download is cancelled
        else:
            time.sleep(seconds)

    def clock(self):
        if self._clock is not None:
            return self._clock()
        return time.monotonic()

    def claim(self, names, owner, url):
        """Claim names the server chose (a foreign executor's worker has no claims to check)."""
        if self.claims is not None:
            self.claims.claim(names, owner, url=url)


class _AlreadyHere(Exception):
    """The file is already on disk under its final name and checks out."""

    def __init__(self, checksum_status):
        super().__init__(checksum_status.value)
        self.checksum_status = checksum_status


# --- resume validators --------------------------------------------------------------------------

def _validator_of(response):
    """What identifies this version of the file: ``{"If-Range": ..., "ETag": ...}``, or None."""
    etag = response.headers.get("ETag", "").strip()
    strong = etag if etag and not etag.startswith("W/") else ""
    modified = response.headers.get("Last-Modified", "").strip()
    if not (strong or modified):
        return None    # a weak ETag may not be used in If-Range (RFC 9110 13.1.5)
    return {"If-Range": strong or modified, "ETag": strong}


def _store_validator(fd, part, validator):
    data = json.dumps(validator).encode("utf-8")
    try:
        os.setxattr(fd, _XATTR, data)
        return
    except (AttributeError, OSError):   # no extended attributes (macOS, Windows, some file systems)
        pass
    sidecar = part + VALIDATOR_SUFFIX.removeprefix(PART_SUFFIX)
    try:
        naming.write_file(sidecar, data, package_file=True)      # the one writer: never via a link
    except OSError:
        return   # no validator: a later resume restarts from zero unless a checksum guards it


def _load_validator(fd, part):
    try:
        return json.loads(os.getxattr(fd, _XATTR))
    except (AttributeError, OSError, ValueError):
        pass
    sidecar = part + VALIDATOR_SUFFIX.removeprefix(PART_SUFFIX)
    try:
        handle = os.open(sidecar, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        return json.loads(os.read(handle, 4096))
    except ValueError:
        return None
    finally:
        os.close(handle)


def _clear_validator(fd, part):
    if fd is not None:
        try:
            os.removexattr(fd, _XATTR)
        except (AttributeError, OSError):
            pass
    sidecar = part + VALIDATOR_SUFFIX.removeprefix(PART_SUFFIX)
    if os.path.lexists(sidecar):
        os.unlink(sidecar)


# --- body readers -------------------------------------------------------------------------------

class _SocketBody:
    """Reads a plain (not chunked) HTTP body straight from the connection into our buffers.

    ``http.client``'s ``read1`` allocates a new ``bytes`` object per call; ``readinto1`` on
    the connection's buffered reader fills one of a few buffers we reuse (no allocation,
    and the bytes are still in the CPU cache when they are written and hashed).
    Like ``read1`` it returns what has arrived, so bytes received before the connection
    breaks are kept. It never reads past ``Content-Length``; the response is closed after
    the transfer (never reused), so anything a server sends beyond it is never read.
    """

    def __init__(self, stream, length):
        self._stream, self._left = stream, length

    def readinto1(self, view):
        if self._left is not None:
            if self._left <= 0:
                return 0
            view = view[:self._left]
        count = self._stream.readinto1(view)
        if self._left is not None:
            self._left -= count
        return count


class _Read1Body:
    """The general case (e.g. a chunked body): urllib3's ``read1``, copied into our buffer."""

    def __init__(self, raw):
        self._read1 = raw.read1

    def readinto1(self, view):
        chunk = self._read1(len(view))
        view[:len(chunk)] = chunk
        return len(chunk)


#: Content codings decoded when a server sends one despite ``Accept-Encoding: identity``:
#: zlib's ``wbits`` for each (31: gzip, 15: zlib-wrapped deflate).
CONTENT_DECODERS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
#: Encoded bytes read per step when decoding.
_ENCODED_STEP = 256 << 10


class BadEncoding(Exception):
    """An encoded body that does not decode: damaged, cut short, or followed by other data."""


class _DecodedBody:
    """A gzip or deflate body, decoded as it is read.

    Each call inflates at most ``len(view)`` bytes (zlib's ``max_length``; the rest of the
    input waits in ``unconsumed_tail``), so memory stays at one buffer whatever the ratio,
    and the caller's bound on the file's size applies to the decoded bytes.  Gzip members
    that follow one another are decoded in turn (RFC 1952); an encoded body that ends inside
    a member, or that does not decode, raises `BadEncoding`.
    """

    def __init__(self, reader, coding):
        self._reader, self._coding = reader, coding
        self._wbits = CONTENT_DECODERS[coding]
        self._decoder = zlib.decompressobj(self._wbits)
        self._input = memoryview(bytearray(_ENCODED_STEP))
        self._pending = b""         # encoded bytes not yet decoded
        self._ended = False         # the encoded body has ended

    def _read(self):
        count = self._reader.readinto1(self._input)
        if count:
            self._pending = self._input[:count]    # decoded before the buffer is read into again
        else:
            self._ended = True

    def _next_member(self, data):
        if self._wbits != CONTENT_DECODERS["gzip"]:
            raise BadEncoding(f"data after the end of the {self._coding} stream")
        self._decoder, self._pending = zlib.decompressobj(self._wbits), data

    def readinto1(self, view):
        while True:
            if self._decoder.eof:
                if self._decoder.unused_data:
                    self._next_member(self._decoder.unused_data)
                elif self._ended:
                    return 0
                else:
                    self._read()
                    if self._pending:
                        self._next_member(self._pending)
                    continue
            if not self._pending and not self._ended:
                self._read()
            try:
                out = self._decoder.decompress(self._pending, len(view))
            except zlib.error as exc:
                raise BadEncoding(f"the {self._coding}-encoded body does not decode ({exc})") from None
            self._pending = self._decoder.unconsumed_tail
            if out:
                view[:len(out)] = out
                return len(out)
            if self._ended and not self._decoder.eof:
                raise BadEncoding(f"the body ended inside its {self._coding} encoding")


def content_coding(response):
    """The coding of ``response``'s body: None for identity, else a key of `CONTENT_DECODERS`.

    Raises
    ------
    ValueError
        For a coding this client does not decode (``br``, ``zstd``, several codings...).
    """
    value = response.headers.get("Content-Encoding", "").strip().lower()
    if value in ("", "identity"):
        return None
    if value in CONTENT_DECODERS:
        return value
    raise ValueError(value)


def _body_reader(response, coding=None):
    """The fastest reader of ``response``'s body that keeps every byte that arrived, decoded."""
    raw = response.raw
    message = getattr(raw, "_fp", None)            # the http.client.HTTPResponse
    stream = getattr(message, "fp", None)          # its buffered reader of the socket
    plain = (getattr(message, "chunked", True) is False and not getattr(raw, "_decoded_buffer", None)
             and getattr(raw, "_fp_bytes_read", 1) == 0 and hasattr(stream, "readinto1"))
    reader = _SocketBody(stream, message.length) if plain else _Read1Body(raw)  # both undecoded
    return reader if coding is None else _DecodedBody(reader, coding)


def _fill(reader, block, pace):
    """Fill ``block`` from ``reader``: ``(bytes read, exception or None, body ended?)``.

    A block is handed over when full, when the body ends, when the connection breaks
    (with the bytes read before the break), or when ``FLUSH_SECONDS`` have passed since
    it began, so a slow transfer reaches the disk as it goes (a killed run keeps it).
    ``pace(n)`` is called after each read with the bytes read so far (it may raise `Fatal`).
    """
    filled, size = 0, len(block)
    flush_at = time.monotonic() + FLUSH_SECONDS
    try:
        while filled < size:
            count = reader.readinto1(block[filled:])
            if not count:
                return filled, None, True
            filled += count
            pace(filled)
            if time.monotonic() > flush_at:
                break
    except (*TRANSPORT_ERRORS, OSError) as exc:   # reads only: a socket error, not the disk
        return filled, exc, False
    return filled, None, False


# --- one file -----------------------------------------------------------------------------------

class _Transfer:
    """Fetches one file into ``<name>.part`` (resuming, retrying, bounded) and verifies it."""

    def __init__(self, task, config, session, hooks):
        self.task, self.config, self.session, self.hooks = task, config, session, hooks
        self.final = Path(task.path)               # may change to the server's Content-Disposition name
        self.part = task.part_path                 # never changes, so a later call finds it
        self.retry = config.retry.start(sleep=hooks.wait, clock=hooks.clock)
        self.fd = None             # the .part, held for the whole call
        self.accumulator = None    # checksum of the bytes in .part, while it is known
        self.validator = None      # identifies the server's version the .part holds
        self.range_ok = None       # does the server continue with Range? None until it answered
        self.total = None          # size of the whole file as the server announced it
        self.server_named = False  # the final name came from Content-Disposition
        self.coding = None         # the content coding of the current response (None: identity)
        self.attempts = self.transferred = self.fresh_starts = self.restarts = 0

    def run(self):
        try:
            done = self._already_done()
            return done if done is not None else self._loop()
        except Fatal as exc:
            return self._result(FileStatus.ERROR, exc.checksum_status, str(exc), exc.error.__name__)
        except DownloadError as exc:      # e.g. a symbolic link planted at the .part
            return self._result(FileStatus.ERROR, ChecksumStatus.NOT_CHECKED, str(exc), type(exc).__name__)
        except OSError as exc:      # the local disk (full, read-only...): no retry helps
            return self._result(FileStatus.ERROR, ChecksumStatus.NOT_CHECKED,
                                f"{self.final.name}: {exc}", DownloadError.__name__)
        finally:
            self._close()

    # -- the .part --

    def _part_fd(self):
        if self.fd is None:
            self.fd, _ = naming.open_part(self.part)
        return self.fd

    def _part_size(self):
        return os.fstat(self._part_fd()).st_size

    def _restart_part(self):
        """Empty the .part (kept open): the next bytes start the file again."""
        os.ftruncate(self._part_fd(), 0)
        _clear_validator(self.fd, self.part)
        self.accumulator = self.validator = None

    def _remove_part(self):
        if self.fd is not None and naming.same_file(self.fd, self.part):
            os.unlink(self.part)
        _clear_validator(self.fd, self.part)
        self._close()
        self.accumulator = self.validator = None

    def _close(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            empty = os.fstat(fd).st_size == 0
            if empty and naming.same_file(fd, self.part):
                os.unlink(self.part)   # an empty .part resumes nothing: leave no litter
                _clear_validator(None, self.part)
            os.close(fd)

    # -- the loop --

    def _already_done(self):
        """A verified final file (SKIPPED) or a complete .part from a killed run (COMPLETE)."""
        expected = self.task.expected
        if expected is None:
            return None
        if matches(self.final, expected):
            if naming.is_regular_file(self.part):
                self._part_fd()
                self._remove_part()
            return self._result(FileStatus.SKIPPED, ChecksumStatus.VERIFIED)
        if not os.path.lexists(self.part):
            return None
        size = self._part_size()
        if size == expected.size:
            self.accumulator = hash_prefix(self.fd, size)
            if not expected.mismatches(self.accumulator.result()):
                return self._finish(ChecksumStatus.VERIFIED)
        if size >= expected.size:
            self._restart_part()
        return None

    def _loop(self):
        while True:
            if self.hooks.cancelled():
                raise Fatal(f"{self.final.name}: cancelled; the partial file is kept for next time")
            try:
                self._attempt()
            except Restart as exc:
                self.restarts += 1
                if not self.retry.wait():
                    raise Fatal(f"{self.final.name}: gave up after {attempts_text(self.attempts)} "
                                f"({self.restarts} from zero): {exc}") from None
                log.info("%s: %s; starting again from the beginning", self.final.name, exc)
                continue
            except Transient as exc:
                if not self.retry.wait(exc.retry_after):
                    raise Fatal(f"{self.final.name}: gave up after {attempts_text(self.attempts)}: {exc}") \
                        from None
                log.info("%s: %s; retry %d", self.final.name, exc, self.retry.retries)
                continue
            except _AlreadyHere as exc:
                self._remove_part()
                return self._result(FileStatus.SKIPPED, exc.checksum_status)
            result = self._verify()
            if result is not None:
                return result

    def _attempt(self):
        offset = self._resume_offset()
        self.attempts += 1
        headers = {}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self.validator:
                headers["If-Range"] = self.validator["If-Range"]
        with closing(open_stream(self.session, self.task.url, self.config, headers)) as response:
            offset = self._accept(response, offset)
            self._stream(response, offset)

    def _resume_offset(self):
        """Bytes already in .part worth continuing from (0 when not)."""
        size = self._part_size()
        if size and self.validator is None:
            self.validator = _load_validator(self.fd, self.part)
        if size and self.range_ok is not False and (self.validator or self.task.expected is not None):
            if self.accumulator is not None and self.accumulator.size != size:
                self.accumulator = None      # out of step with the disk: hash the prefix again
            return size
        if size:
            log.info("%s: the partial file cannot be told apart from a changed one (no validator, no "
                     ".checksum); starting again from zero", self.final.name)
            self._restart_part()
        return 0

    def _known_size(self):
        """The file's size as announced before its body: .checksum, DataLink, then the server."""
        if self.task.expected is not None:
            return self.task.expected.size
        return self.task.size if self.task.size is not None else self.total

    def _accept(self, response, offset):
        """Check the response continues (206) or replaces (200) the .part; returns the offset."""
        status = response.status_code
        if status == 416:               # the .part is not a prefix of what the server has
            self._restart_part()
            raise Restart("the server refused the range (HTTP 416)")
        if status not in (200, 206):
            raise Fatal(f"unexpected HTTP {status} from {redact_url(self.task.url)}")
        expected = self.task.expected
        if status == 206:
            start, total = parse_content_range(response.headers.get("Content-Range"))
            etag = response.headers.get("ETag", "").strip()
            other_version = bool(self.validator and self.validator.get("ETag") and etag
                                 and etag != self.validator["ETag"])
            size = expected.size if expected is not None else self.task.size
            if start != offset or (size is not None and total not in (None, size)) or other_version:
                self.range_ok = other_version    # a wrong offset: ask without Range from now on
                self._restart_part()
                raise Restart(f"the server sent Content-Range {response.headers.get('Content-Range')!r}"
                              f" for bytes={offset}-" + (" of another version" if other_version else ""))
            self.range_ok = True
        else:
            if offset:
                log.info("%s: the server sent the whole file (it changed, or ignores Range); "
                         "replacing the partial file", self.final.name)
            self.range_ok = "bytes" in response.headers.get("Accept-Ranges", "").lower()
            offset, total = 0, content_length(response)
            self.validator = _validator_of(response) if self.range_ok else None
        try:
            self.coding = content_coding(response)
        except ValueError as exc:
            raise Fatal(f"{self.final.name}: the server sent it with Content-Encoding: {exc}, which this "
                        "client does not decode (it asks for identity); not kept") from None
        if self.coding is not None:
            # An encoded body (despite Accept-Encoding: identity) has no byte offsets of the file to
            # resume from, and its Content-Length counts encoded bytes.
            self.range_ok, total = False, None
            if status == 206:
                self._restart_part()
                raise Restart(f"the server sent a range of a {self.coding}-encoded body")
        if expected is not None and total is not None and total != expected.size:
            raise Fatal(f"{self.final.name}: the server announces {total} bytes, "
                        f"its .checksum {expected.size}")
        self.total = total
        self._use_server_name(response)
        self._skip_if_present(total)
        self._prepare_part(offset)
        size = expected.size if expected is not None else total
        self.hooks.report("start", self.task.index, (offset, size, self.final.name))
        return offset

    def _use_server_name(self, response):
        if self.task.named_by_caller:
            return
        name = parse_content_disposition(response.headers.get("Content-Disposition"))
        if not name or name == self.task.name:
            return
        try:
            name = naming.server_filename(name, url=self.task.url)
            path = naming._local_path(self.task.savedir, name, url=self.task.url)
            self.hooks.claim([name], self.task.index, self.task.url)
        except UnsafeFilenameError as exc:
            raise Fatal(str(exc), UnsafeFilenameError) from None
        except DownloadError as exc:
            raise Fatal(f"{self.task.name}: the server names it {name!r}, but {exc}") from None
        self.final, self.server_named = path, True

    def _skip_if_present(self, total):
        """A file already under the server's name, or of the announced size when no checksum."""
        expected = self.task.expected
        if expected is not None:
            if self.server_named and matches(self.final, expected):
                raise _AlreadyHere(ChecksumStatus.VERIFIED)
        elif (total is not None and naming.is_regular_file(self.final)
              and os.lstat(self.final).st_size == total):
            raise _AlreadyHere(ChecksumStatus.SIZE_ONLY)

    def _prepare_part(self, offset):
        if offset == 0:
            self.accumulator = ChecksumAccumulator()
            _clear_validator(self.fd, self.part)
            if self.validator:
                _store_validator(self._part_fd(), self.part, self.validator)
        elif self.accumulator is None:
            # Resuming a .part from an earlier attempt or run: hash what is there, once, through our fd.
            self.accumulator = hash_prefix(self._part_fd(), offset)

    def _stream(self, response, offset):
        """Write the body at ``offset`` of the .part, hashing as it goes, within the bounds."""
        # An encoded body's Content-Length counts encoded bytes: its end is the encoding's own end.
        announced = content_length(response) if self.coding is None else None
        size = self._known_size()
        room = (size if size is not None else self.config.max_unannounced) - offset
        reader = _body_reader(response, self.coding)
        received, started = 0, self.hooks.clock()

        pacing = Pacing(min_rate=self.config.min_rate, grace=self.config.grace)   # the streams' one rule

        def pace(filled):
            why = pacing.breach(received + filled, self.hooks.clock() - started)
            if why:
                raise Fatal(f"{self.final.name}: {why}; stopped (the partial file is kept)")

        discard = None      # why the .part must start again, once every block handed over is written
        with Sink(self._part_fd(), offset, self.accumulator, self.config,
                  expected_bytes=room if size is not None else announced) as sink:
            while True:
                if self.hooks.cancelled():
                    raise Fatal(f"{self.final.name}: cancelled; the partial file is kept for next time")
                block = sink.free_block()
                view = block[:max(0, min(len(block), room - received + 1))]   # +1 reveals a longer body
                try:
                    count, broken, ended = _fill(reader, view, pace)
                except BadEncoding as exc:
                    sink.give_back(block)
                    discard = Restart(str(exc))
                    break
                if received + count > room:
                    sink.give_back(block)
                    announced_by = ("its .checksum" if self.task.expected is not None else
                                    "DataLink" if self.task.size is not None else
                                    "the server" if size is not None else "max_unannounced")
                    discard = Fatal(f"{self.final.name}: the server sent more than the {offset + room} bytes "
                                    f"announced by {announced_by}; cut, and the file was not kept")
                    break
                if count:
                    sink.put(view[:count])   # written, then hashed: only bytes on disk are hashed
                    received += count
                    self.transferred += count
                    self.hooks.report("bytes", self.task.index, count)
                else:
                    sink.give_back(block)
                if broken is not None:
                    message = f"connection lost at byte {offset + received}: {describe(broken)}"
                    raise Transient(message) from None
                if ended or not view:
                    break
        if discard is not None:
            self._restart_part()
            raise discard
        if announced is not None and received < announced:
            raise Transient(f"body ended after {received} of {announced} bytes")

    def _verify(self):
        """COMPLETE, or None to fetch again from scratch once after a mismatch."""
        got = self.accumulator.result()
        expected = self.task.expected
        if expected is not None:
            differing = expected.mismatches(got)
            if not differing:
                return self._finish(ChecksumStatus.VERIFIED)
            if self.fresh_starts == 0:
                self.fresh_starts += 1
                self._restart_part()
                log.info("%s: %s differ from the .checksum; downloading it again",
                         self.final.name, ", ".join(differing))
                return None
            self._remove_part()
            raise Fatal(f"{self.final.name}: {', '.join(differing)} did not match the .checksum, "
                        "twice; the file was deleted", ChecksumMismatchError, ChecksumStatus.MISMATCH)
        known = self._known_size()
        if known is not None and got.size != known:
            self._remove_part()
            raise Fatal(f"{self.final.name}: got {got.size} bytes, {known} were announced")
        return self._finish(ChecksumStatus.SIZE_ONLY if known is not None else ChecksumStatus.NOT_CHECKED)

    def _finish(self, checksum_status):
        """Rename the .part verified through our descriptor, if the name still means that file."""
        fd = self.fd
        if os.fstat(fd).st_size != self.accumulator.size or not naming.same_file(fd, self.part):
            self._close()
            raise Fatal(f"{self.final.name}: the partial file was changed by someone else; not kept")
        _clear_validator(fd, self.part)
        if os.name == "nt":
            self._close()      # Windows renames no open file
        try:
            naming.place(self.part, self.final, replace=not self.server_named)
        except FileExistsError:
            raise Fatal(f"{self.final.name} already exists and is another file; it was not overwritten "
                        f"(the download is kept as {Path(self.part).name})") from None
        if self.fd is not None:
            self.fd = None
            os.close(fd)
        return self._result(FileStatus.COMPLETE, checksum_status)

    def _result(self, status, checksum_status, message="", error_type=""):
        task = self.task
        if status is not FileStatus.ERROR:
            size = os.lstat(self.final).st_size
            if task.kind == ERROR_FILE:
                message = _error_file_text(self.final)
        else:
            size = task.expected.size if task.expected else (self.total or 0)
        return FileResult(task.index, task.url, str(self.final), task.checksum_path, task.product_id,
                          task.result_id, task.kind, size, checksum_status, status, message, error_type,
                          self.attempts, self.transferred, task.labels)


def _error_file_text(path):
    with open(path, "rb") as stream:
        return stream.read(MAX_ERROR_TEXT).decode("utf-8", "replace").strip()


def failed_result(task, exc, *, checksum_status=ChecksumStatus.NOT_CHECKED):
    return FileResult(task.index, task.url, task.path, task.checksum_path, task.product_id,
                      task.result_id, task.kind, task.expected.size if task.expected else 0,
                      checksum_status, FileStatus.ERROR, str(exc), type(exc).__name__, labels=task.labels)


def read_checksum(task, config, session, hooks=None):
    """Fetch a task's ``.checksum``, keep it on disk, and return the task with ``expected``.

    Raises
    ------
    DownloadError
        If the sidecar cannot be fetched, is not a CASDA checksum, names an unsafe or a
        clashing file, or cannot be written.
    """
    hooks = hooks or Hooks()
    try:
        body, disposition = fetch_small(session, task.checksum_url, config, hooks)
    except Fatal as exc:
        raise exc.error(f"{task.name}: .checksum: {exc}", url=task.checksum_url, path=task.path) from None
    expected = read_expected(body, task)
    server_name = parse_content_disposition(disposition)
    if server_name and server_name != task.checksum_name and not task.named_by_caller:
        name = naming.server_filename(server_name, url=task.checksum_url)
        naming._local_path(task.savedir, name, url=task.checksum_url)
        hooks.claim([name], task.index, task.checksum_url)
        task = replace(task, checksum_name=name)
    try:
        naming.write_file(task.checksum_path, body)
    except DownloadError:
        raise
    except OSError as exc:        # the local disk: full, read-only, no permission
        reason = "it exists as a link or another file" if exc.errno == errno.EEXIST else exc
        raise DownloadError(f"{task.name}: cannot write {task.checksum_name}: {reason}",
                            url=task.checksum_url, path=task.checksum_path) from None
    return replace(task, expected=expected)


def transfer_file(task, config, session=None, hooks=None):
    """Download and verify one file; never raises for a download problem.

    This is the unit of work handed to the executor: a top-level function whose
    arguments and result are picklable (except ``session`` and ``hooks``, which only
    the built-in thread pool passes).

    Parameters
    ----------
    task : FileTask
        What to fetch and what it must hash to (``task.expected``).
    config : TransferConfig
    session : requests.Session, optional
        Defaults to a session of this worker thread built from ``config.session``.
    hooks : optional
        Progress, cancellation, clock, sleep and name claims of the local thread pool.

    Returns
    -------
    FileResult
    """
    session = session if session is not None else worker_session(config.session)
    return _Transfer(task, config, session, hooks or Hooks()).run()
