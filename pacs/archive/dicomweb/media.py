"""Media types, Accept negotiation and multipart/related bodies for DICOMweb (PS3.18 8.7, 8.6.1.2).

An Accept header is a list of media ranges, each with parameters (``type``, ``transfer-syntax``,
``q``); :func:`accept` parses it and the services pick the first range they can satisfy, best
quality first, in the order the client wrote them (PS3.18 8.7.4). A multipart/related body
(RFC 2387) is written part by part by :func:`multipart_chunks`, so a study goes out one chunk
of one file at a time, and read part by part by :class:`MultipartReader`, each part's body going
to a file as it arrives. :func:`multipart_response` sends one: the files are read in a worker
thread several megabytes at a time (one thread hand-off per batch, not per chunk), and when every
part's length is known beforehand (stored files sent as they are) the response has a
Content-Length rather than chunked transfer coding, so each chunk goes to the socket as read.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
from fastapi.responses import JSONResponse, StreamingResponse

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"  # the default transfer syntax, PS3.18 8.7.3.5.2
CHUNK = 1024 * 1024
BATCH = 2 * CHUNK  # read per worker-thread hand-off while a response streams

# Media types of the compressed pixel data (frames, bulk data) in each transfer syntax
# (PS3.18 Table 8.7.3-2)
PIXEL_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}

# The media type of a video object's pixel data, a bitstream of its own (PS3.18 Table 8.7.3-2,
# PS3.5 8.2.5-8.2.12): sent whole, never as frames or uncompressed.
VIDEO_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.100": "video/mpeg",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101": "video/mpeg",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102": "video/mp4",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103": "video/mp4",  # MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.104": "video/mp4",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 for 2D video
    "1.2.840.10008.1.2.4.105": "video/mp4",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 for 3D video
    "1.2.840.10008.1.2.4.106": "video/mp4",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.107": "video/H265",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108": "video/H265",  # HEVC/H.265 Main 10 Profile / Level 5.1
}


class DicomwebError(Exception):
    """A request answered with an HTTP error status and a JSON body that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"status": self.status, "message": self.message}, status_code=self.status,
                            headers=dict(headers or {}))


SHOWN_CHARACTERS = 80  # of a client's value quoted back in an error


def shown(value: str) -> str:
    """A client's value as an error message quotes it: repr, cut short (a value may be megabytes)."""
    return repr(value) if len(value) <= SHOWN_CHARACTERS else repr(value[:SHOWN_CHARACTERS]) + "…"


def bad_request(message: str) -> DicomwebError:
    return DicomwebError(400, message)  # 400 Bad Request


def not_found(message: str) -> DicomwebError:
    return DicomwebError(404, message)  # 404 Not Found


def not_acceptable(message: str) -> DicomwebError:
    return DicomwebError(406, message)  # 406 Not Acceptable


def unsupported_media_type(message: str) -> DicomwebError:
    return DicomwebError(415, message)  # 415 Unsupported Media Type


# -- header values ---------------------------------------------------------------------------

_SPLIT_COMMA = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')
_SPLIT_SEMICOLON = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')


@dataclass
class MediaRange:
    """One media range of an Accept header, or a Content-Type."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def part_type(self) -> str:
        """The ``type`` parameter of a multipart range (the media type of its parts)."""
        return self.params.get("type", "").lower()

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        """Whether this range covers ``media_type`` (``*/*``, ``image/*`` or the type itself)."""
        if self.type in ("*/*", media_type):
            return True
        major, _, minor = self.type.partition("/")
        return minor == "*" and media_type.startswith(major + "/")


def parse_media_type(value: str) -> MediaRange:
    """``multipart/related; type="application/dicom"; boundary=x`` → its type and parameters."""
    head, *rest = [p.strip() for p in _SPLIT_SEMICOLON.split(value)]
    params: dict[str, str] = {}
    quality = 1.0
    for item in rest:
        name, _, raw = item.partition("=")
        name, raw = name.strip().lower(), raw.strip().strip('"')
        if name == "q":
            try:
                quality = float(raw)
            except ValueError:
                raise bad_request(f"the quality value q={shown(raw)} of {shown(head)} is not a number") from None
        elif name:
            params[name] = raw
    return MediaRange(head.lower(), params, quality)


def negotiate(ranges: list[MediaRange], offered: str) -> bool | None:
    """Whether the client takes ``offered`` as a single part (True: it asked for the bare media
    type, PS3.18 8.7.3.2), in a multipart/related body (False: its default, 8.7.3.3), or not at
    all (None); the first range that takes it decides."""
    for r in ranges:
        if r.type == MULTIPART:
            if MediaRange(r.part_type or "*/*").matches(offered):
                return False
        elif r.type in ("*/*", "multipart/*"):
            return False
        elif r.matches(offered):
            return True
    return None


def accept(header: str | None) -> list[MediaRange]:
    """The ranges of an Accept header, best first (RFC 9110 12.5.1); ``*/*`` when absent."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges = [parse_media_type(item) for item in _SPLIT_COMMA.split(header) if item.strip()]
    ranges = [r for r in ranges if r.quality > 0]
    return sorted(ranges, key=lambda r: -r.quality)  # stable: the client's order within a quality


def require_json(header: str | None) -> None:
    """QIDO-RS and metadata answer application/dicom+json only (PS3.18 8.7.3.4; no XML here)."""
    for item in accept(header):
        if item.matches(DICOM_JSON) or item.type in ("application/json", "application/*"):
            return
    raise not_acceptable(f"this resource is available as {DICOM_JSON} only (Accept: {header})")


# -- multipart/related out -------------------------------------------------------------------

def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_type(part_type: str, boundary: str) -> str:
    return f'{MULTIPART}; type="{part_type}"; boundary={boundary}'


@dataclass
class Part:
    """One part to send: its Content-Type and the chunks of its body (produced when sent)."""

    content_type: str
    chunks: Iterable[bytes]
    location: str = ""
    size: int | None = None  # the body's length, when known before it is read (a stored file)

    def head(self, boundary: str) -> bytes:
        """The delimiter line and the part's headers (RFC 2046 5.1.1), up to the empty line."""
        head = f"--{boundary}\r\nContent-Type: {self.content_type}\r\n"
        if self.location:
            head += f"Content-Location: {self.location}\r\n"
        return (head + "\r\n").encode("ascii")


def _close_delimiter(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def multipart_chunks(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body of a multipart/related message (RFC 2046 5.1.1), one chunk at a time."""
    for part in parts:
        yield part.head(boundary)
        yield from part.chunks
        yield b"\r\n"
    yield _close_delimiter(boundary)


def multipart_length(parts: list[Part], boundary: str) -> int | None:
    """The length of :func:`multipart_chunks` of ``parts``, or None if a part's size is unknown."""
    if any(part.size is None for part in parts):
        return None
    return sum(len(part.head(boundary)) + (part.size or 0) + 2 for part in parts) + len(_close_delimiter(boundary))


async def in_batches(chunks: Iterable[bytes], size: int = BATCH) -> AsyncIterator[bytes]:
    """The chunks of a synchronous producer (file reads, decoding), drawn in a worker thread about
    ``size`` bytes at a time so that the event loop is neither blocked nor handed work chunk by
    chunk; the producer is closed (its files with it) however the response ends."""
    iterator = iter(chunks)

    def take() -> list[bytes]:
        batch: list[bytes] = []
        total = 0
        for chunk in iterator:
            batch.append(chunk)
            total += len(chunk)
            if total >= size:
                break
        return batch

    try:
        while batch := await anyio.to_thread.run_sync(take):
            for chunk in batch:
                yield chunk
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def multipart_response(parts: Iterable[Part], part_type: str) -> StreamingResponse:
    """A streamed multipart/related response of ``parts``; a list of parts whose sizes are all
    known is sent with a Content-Length."""
    boundary = new_boundary()
    length = multipart_length(parts, boundary) if isinstance(parts, list) else None
    headers = {"Content-Length": str(length)} if length is not None else None
    return StreamingResponse(in_batches(multipart_chunks(parts, boundary)), headers=headers,
                             media_type=multipart_type(part_type, boundary))


def single_part_response(part: Part) -> StreamingResponse:
    """One part as the whole body (a bare ``application/dicom``), with its length when known."""
    headers = {"Content-Length": str(part.size)} if part.size is not None else None
    return StreamingResponse(in_batches(part.chunks), headers=headers, media_type=part.content_type)


def file_chunks(handle: BinaryIO, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    """A file (or a range of it) in chunks of :data:`CHUNK` bytes; closes the file at the end.
    With ``length``, a file that ends before it is an error (a response announced its length)."""
    with handle:
        if start:
            handle.seek(start)
        left = length
        while left is None or left > 0:
            chunk = handle.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                if left:
                    raise OSError(f"stored file ended {left} bytes short of its recorded size")
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


# -- multipart/related in --------------------------------------------------------------------

MAX_PART_HEADERS = 16 * 1024


@dataclass
class ReceivedPart:
    """A part of a request, its body in a file of its own."""

    headers: dict[str, str]
    path: Path
    size: int

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class MultipartReader:
    """Reads a multipart/related request body (RFC 2046 5.1) from its chunks as they arrive,
    writing each part's body to a new file in ``folder``; nothing is held beyond a chunk.

    >>> async for part in MultipartReader(request.stream(), boundary, folder):  # doctest: +SKIP
    ...     store(part.path)
    """

    def __init__(self, chunks: AsyncIterator[bytes], boundary: str, folder: Path) -> None:
        self.chunks = chunks.__aiter__()
        self.delimiter = b"\r\n--" + boundary.encode("latin-1")
        self.folder = folder
        self.buffer = bytearray(b"\r\n")  # so that a body starting with the boundary finds it
        self.ended = False

    async def _more(self) -> bool:
        if self.ended:
            return False
        try:
            chunk = await self.chunks.__anext__()
        except StopAsyncIteration:
            self.ended = True
            return False
        self.buffer += chunk
        return True

    async def _until(self, marker: bytes, limit: int) -> int:
        """Where ``marker`` starts in the buffer, reading on until it comes; a marker farther
        than ``limit`` bytes on is refused, found or not."""
        start = 0
        while (index := self.buffer.find(marker, start)) < 0:
            if len(self.buffer) > limit:
                break
            start = max(0, len(self.buffer) - len(marker) + 1)
            if not await self._more():
                raise bad_request("the multipart body ended early: a boundary or a part is missing")
        if index < 0 or index > limit:
            raise bad_request(f"a multipart part's headers are longer than {limit} bytes")
        return index

    async def _skip_preamble(self) -> None:
        """Drop what comes before the first delimiter (RFC 2046 5.1.1: the preamble is to be
        ignored), keeping no more of it than could be the start of the delimiter."""
        while (index := self.buffer.find(self.delimiter)) < 0:
            del self.buffer[:max(0, len(self.buffer) - len(self.delimiter) + 1)]
            if not await self._more():
                raise bad_request("the multipart body ended early: a boundary or a part is missing")
        del self.buffer[:index + len(self.delimiter)]

    def __aiter__(self) -> AsyncIterator[ReceivedPart]:
        return self._parts()

    async def _parts(self) -> AsyncIterator[ReceivedPart]:
        await self._skip_preamble()
        while True:
            while len(self.buffer) < 2 and await self._more():
                pass
            if self.buffer.startswith(b"--"):
                return  # the close delimiter; the epilogue is ignored
            index = await self._until(b"\r\n", MAX_PART_HEADERS)  # transport padding
            del self.buffer[:index + 2]
            headers: dict[str, str] = {}
            while len(self.buffer) < 2 and await self._more():
                pass
            if self.buffer.startswith(b"\r\n"):
                del self.buffer[:2]
            else:
                index = await self._until(b"\r\n\r\n", MAX_PART_HEADERS)
                for line in bytes(self.buffer[:index]).decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                del self.buffer[:index + 4]
            yield await self._body(headers)

    async def _body(self, headers: dict[str, str]) -> ReceivedPart:
        path = self.folder / f"stow-{uuid.uuid4().hex}.part"
        size = 0
        keep = len(self.delimiter) - 1
        try:
            with path.open("wb") as handle:
                while True:
                    index = self.buffer.find(self.delimiter)
                    if index >= 0:
                        handle.write(self.buffer[:index])
                        size += index
                        del self.buffer[:index + len(self.delimiter)]
                        return ReceivedPart(headers, path, size)
                    if len(self.buffer) > keep:
                        cut = len(self.buffer) - keep
                        handle.write(self.buffer[:cut])
                        size += cut
                        del self.buffer[:cut]
                    if not await self._more():
                        raise bad_request("the multipart body ended inside a part (no closing boundary)")
        except BaseException:
            path.unlink(missing_ok=True)
            raise

