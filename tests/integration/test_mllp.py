"""MLLP framing and character sets, on real asyncio streams."""

from __future__ import annotations

import asyncio

import pytest

from pacs.integration import mllp
from pacs.integration.mllp import CharsetError, FrameReader, FrameTooLarge


async def frames_from(data: bytes, *, max_bytes: int = 1000, chunk: int = 7) -> list[object]:
    reader = asyncio.StreamReader()
    for i in range(0, len(data), chunk):  # arrive in small pieces, as TCP may deliver them
        reader.feed_data(data[i:i + chunk])
    reader.feed_eof()
    frames = FrameReader(reader, max_bytes, idle_timeout=1)
    out: list[object] = []
    while True:
        try:
            frame = await frames.next_frame()
        except FrameTooLarge as exc:
            out.append(("too large", exc.head[:11]))
            continue
        except asyncio.IncompleteReadError:
            out.append("incomplete")
            break
        if frame is None:
            break
        out.append(frame)
    return out


def test_frames_split_across_reads():
    data = mllp.frame(b"MSH|one") + b"\r\n" + mllp.frame(b"MSH|two")
    assert asyncio.run(frames_from(data)) == [b"MSH|one", b"MSH|two"]


def test_oversized_frame_is_skipped_and_the_next_one_read():
    data = mllp.frame(b"MSH|^~\\&|" + b"x" * 5000) + mllp.frame(b"MSH|small")
    assert asyncio.run(frames_from(data, max_bytes=100, chunk=300)) == [("too large", b"MSH|^~\\&|xx"),
                                                                       b"MSH|small"]


def test_truncated_frame_at_end_of_stream():
    assert asyncio.run(frames_from(mllp.frame(b"MSH|ok") + b"\x0bMSH|cut")) == [b"MSH|ok", "incomplete"]


def test_restarted_frame_drops_the_partial_one():
    assert asyncio.run(frames_from(b"\x0bMSH|partial" + mllp.frame(b"MSH|whole"))) == [b"MSH|whole"]


def test_idle_timeout():
    async def run() -> None:
        reader = asyncio.StreamReader()
        with pytest.raises(TimeoutError):
            await FrameReader(reader, 100, idle_timeout=0.05).next_frame()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("msh18", "codec"),
    [("UNICODE UTF-8", "utf-8"), ("GB 18030", "gb18030"), ("GB 18030-2000", "gb18030"), ("8859/1", "latin-1"),
     ("ASCII", "ascii"), ("gbk", "gb18030"), ("UTF-8", "utf-8")],
)
def test_decode_per_msh18(msh18, codec):
    text = "MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5||||||" + msh18 + "\rPID|1||X||" + ("Zoë" if codec == "latin-1" else "Li")
    assert mllp.decode(text.encode(codec), "ASCII") == (text, msh18)


def test_decode_uses_the_default_when_msh18_is_empty():
    raw = "MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.4\rPID|1||X||张三".encode("gb18030")
    assert mllp.decode(raw, "GB 18030")[0].endswith("张三")
    with pytest.raises(CharsetError):
        mllp.decode(raw, "UNICODE UTF-8")


def test_unknown_charset_is_an_error():
    with pytest.raises(CharsetError, match="not supported"):
        mllp.decode(b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5||||||KLINGON\r", "ASCII")
