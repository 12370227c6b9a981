"""MLLP framing and character sets: bytes on the wire to message text and back.

Minimal Lower Layer Protocol (HL7 v2.5.1 Appendix C, Release 2): a message is sent as
``<VT> payload <FS><CR>`` (0x0B … 0x1C 0x0D). Nothing here knows about segments beyond reading
MSH-18 to pick the character set (HL7 table 0211).
"""

from __future__ import annotations

import asyncio
import codecs
import socket
import ssl
from dataclasses import dataclass
from functools import lru_cache

START_BLOCK = b"\x0b"  # <VT>
END_BLOCK = b"\x1c"  # <FS>
CARRIAGE_RETURN = b"\r"
TRAILER = END_BLOCK + CARRIAGE_RETURN
HEADER_KEEP = 4096  # bytes of an oversized frame kept so that its MSH can be answered
READ_CHUNK = 65536
# Connections the kernel completes and queues before the listener accepts them (listen(2)'s
# backlog): asyncio's default of 100 dropped the SYNs of a burst of 200, each tried again a
# second later. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024

# HL7 table 0211 (alternate character sets) and the spellings senders use for them.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
    "GB 18030-2000": "gb18030",
    "GB 18030": "gb18030",
    "GB18030": "gb18030",
    "GBK": "gb18030",  # GB 18030 is a superset of GBK and GB 2312
    "GB2312": "gb18030",
    "GB 2312": "gb18030",
    "BIG-5": "big5",
    "BIG5": "big5",
    "ISO IR87": "iso2022_jp",
    "KS X 1001": "euc_kr",
}


class CharsetError(ValueError):
    """The message's bytes can't be read in its declared (or the default) character set."""


class FrameTimeout(TimeoutError):
    """A frame began but did not end within the frame timeout: a sender trickling bytes, or one
    that announced a message and went silent."""


class FrameTooLarge(ValueError):
    def __init__(self, size: int, limit: int, head: bytes) -> None:
        super().__init__(f"message of at least {size} bytes exceeds the limit of {limit} bytes")
        self.head = head


def frame(payload: bytes) -> bytes:
    """Wrap one message for the wire."""
    return START_BLOCK + payload + TRAILER


def connect(host: str, port: int, timeout: float, tls: ssl.SSLContext | None = None) -> socket.socket:
    """A connection to an MLLP receiver, Nagle's algorithm off (DESIGN.md); over TLS with ``tls``
    (a client context, :func:`pacs.tls.client_context`: the receiver's certificate checked for
    ``host``), the handshake done before it is returned."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return sock


# Text every character set an HL7 message can be declared in must read as ASCII reads it: the
# header is found before decoding (declared_charset), and the delimiters and escape sequences
# (HL7 v2.5.1 2.7) are ASCII.
ASCII_PROBE = bytes(range(0x20, 0x7F)) + b"\\T\\ \\X0D\\ \\N\\ \\u\\ \r"


def python_codec(charset: str) -> str | None:
    """The Python codec for an HL7 table 0211 name (case and spacing tolerated), or None.

    Names outside table 0211 are looked up among Python's codecs, and taken only when the codec
    is a text encoding that reads and writes ASCII unchanged (:func:`_reads_ascii`): Python
    also knows codecs that are not character sets at all (``uu``, ``base64``, ``rot13``,
    ``hex``, ``undefined``), and ones no HL7 message can be written in (``idna``, EBCDIC,
    ``unicode_escape``)."""
    key = " ".join(charset.strip().upper().split())
    if key in CHARSETS:
        return CHARSETS[key]
    try:
        name = codecs.lookup(key).name
    except (LookupError, ValueError):  # ValueError: a name with a NUL byte in it
        return None
    return name if _reads_ascii(name) else None


@lru_cache(maxsize=64)
def _reads_ascii(codec: str) -> bool:
    """Whether ``codec`` is a text encoding that decodes and encodes :data:`ASCII_PROBE` as ASCII does."""
    expected = ASCII_PROBE.decode("ascii")
    try:
        return (getattr(codecs.lookup(codec), "_is_text_encoding", True)
                and ASCII_PROBE.decode(codec) == expected and expected.encode(codec) == ASCII_PROBE)
    except (UnicodeError, LookupError, ValueError, TypeError):
        return False


def declared_charset(raw: bytes) -> str:
    """MSH-18's first repetition, read from the bytes before decoding (every charset in table
    0211 that senders use for MSH keeps ASCII bytes as ASCII)."""
    if not raw.startswith(b"MSH") or len(raw) < 4 or not _is_delimiter(raw[3:4]):
        return ""
    end = raw.find(b"\r")
    header = raw[: end if end >= 0 else len(raw)].split(b"\n", 1)[0]
    fields = header.split(raw[3:4])
    # fields[0] = "MSH", fields[1] = MSH-2, so MSH-n is fields[n - 1]
    if len(fields) < 18:
        return ""
    repetition = raw[5:6] if len(raw) > 5 else b"~"
    return fields[17].split(repetition, 1)[0].decode("ascii", "replace").strip()


def _is_delimiter(byte: bytes) -> bool:
    return bool(byte) and not byte.isalnum() and byte not in b" \r\n\t"


def decode(raw: bytes, default_charset: str) -> tuple[str, str]:
    """Decode a message per its MSH-18, else ``default_charset``. Returns (text, charset used)."""
    charset = declared_charset(raw) or default_charset
    codec = python_codec(charset)
    if codec is None:
        raise CharsetError(f"MSH-18 character set {charset!r} is not supported")
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise CharsetError(
            f"byte {exc.start} (0x{raw[exc.start]:02X}) is not valid {charset}"
        ) from None
    except UnicodeError as exc:  # a codec that fails without naming a byte
        raise CharsetError(f"the message is not valid {charset}: {exc}") from None
    # HL7 v2 text has no NUL (and PostgreSQL's text cannot hold one): U+FFFD stands in for it,
    # as for any character that cannot be shown; the raw bytes are kept as they came.
    return text.lstrip("\ufeff").replace("\x00", "\ufffd"), charset


def encode(text: str, charset: str) -> bytes:
    codec = python_codec(charset) or "utf-8"
    return text.encode(codec, errors="replace")


@dataclass
class FrameReader:
    """Reads MLLP frames from a stream, enforcing a size limit and two timeouts: a frame must
    begin within ``idle_timeout`` of the previous one (or of the connection's opening; bytes
    outside a frame do not count as activity) and end within ``frame_timeout`` of its start
    block (None: as ``idle_timeout``). Both are deadlines, not waits between reads, so a sender
    trickling a byte at a time holds a connection no longer than one that sends nothing."""

    reader: asyncio.StreamReader
    max_bytes: int
    idle_timeout: float
    frame_timeout: float | None = None

    def __post_init__(self) -> None:
        self._buffer = bytearray()
        self.between_frames = True
        """Waiting for a frame's start block: no message of this connection is in flight."""

    async def _fill(self, deadline: float) -> bool:
        async with asyncio.timeout_at(deadline):  # no task per read, as wait_for makes
            chunk = await self.reader.read(READ_CHUNK)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    async def next_frame(self) -> bytes | None:
        """The next payload, or None at a clean end of stream.

        Raises ``TimeoutError`` when no frame begins within ``idle_timeout``,
        :class:`FrameTimeout` when one begins and does not end within ``frame_timeout``,
        :class:`FrameTooLarge` for a frame over the limit (its remainder is skipped),
        ``asyncio.IncompleteReadError`` when the peer closes in the middle of a frame.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_timeout
        buf = self._buffer
        self.between_frames = True
        # Skip anything before the start block (keep-alive newlines, noise).
        while True:
            start = buf.find(START_BLOCK)
            if start >= 0:
                del buf[: start + 1]
                self.between_frames = False
                break
            buf.clear()
            if not await self._fill(deadline):
                return None
        frame_timeout = self.idle_timeout if self.frame_timeout is None else self.frame_timeout
        deadline = loop.time() + frame_timeout
        searched = 0
        oversize = False
        head = b""
        total = 0
        while True:
            end = buf.find(TRAILER, max(searched - 1, 0))
            restart = buf.find(START_BLOCK, 0, end if end >= 0 else len(buf))
            if restart >= 0 and not oversize:
                # A new start block before the end: the sender gave up on the previous frame.
                del buf[: restart + 1]
                searched = 0
                continue
            if end >= 0:
                total += end
                payload = bytes(buf[:end])
                del buf[: end + len(TRAILER)]
                if oversize or total > self.max_bytes:
                    raise FrameTooLarge(total, self.max_bytes, head or payload[:HEADER_KEEP])
                return payload
            searched = len(buf)
            if total + len(buf) > self.max_bytes:
                if not oversize:
                    head = bytes(buf[:HEADER_KEEP])
                    oversize = True
                # Keep only a tail long enough to hold a split trailer.
                keep = buf[-1:]
                total += len(buf) - 1
                buf.clear()
                buf += keep
                searched = 0
            try:
                more = await self._fill(deadline)
            except TimeoutError:
                raise FrameTimeout(f"a frame not whole {frame_timeout:g} s after it began "
                                   f"({total + len(buf)} bytes arrived)") from None
            if not more:
                raise asyncio.IncompleteReadError(bytes(buf), None)
