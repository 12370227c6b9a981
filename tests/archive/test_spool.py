"""The spool file a received data set is written to (pacs.archive.spool): written around the
page cache where the file system allows it, hashed as it is written, whole and on disk once
synced, whatever the sizes of the pieces that arrive; read_header() reads it beyond the head
only once it is whole; a spool that cannot reach the disk stores nothing."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from pacs.archive import spool
from pacs.archive.spool import BLOCK, CHUNK, DirectFile, HashingSpool
from pacs.archive.store import HEAD_BYTES, read_header
from tests.archive.test_header import ct_file


def direct_io_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    probe = DirectFile.create(str(folder / "probe"), hashlib.sha256())
    if probe is None:
        pytest.skip(f"the file system of {folder} has no O_DIRECT (tmpfs?): the direct spool cannot be tested here")
    probe.close()
    os.unlink(folder / "probe")
    return folder


@pytest.fixture(params=["direct", "page cache"])
def spool_mode(request, monkeypatch):
    monkeypatch.setattr(spool, "_direct", [request.param == "direct"])
    return request.param


def pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    out, offset = [], 0
    while offset < len(data):
        size = sizes[len(out) % len(sizes)]
        out.append(data[offset:offset + size])
        offset += size
    return out


@pytest.mark.parametrize("length", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, HEAD_BYTES + 7, CHUNK - 1, CHUNK, CHUNK + 1,
                                    2 * CHUNK + BLOCK + 3])
@pytest.mark.parametrize("sizes", [[1 << 20], [16_378], [1, 4095, 4097, 130_000]])
def test_what_is_written_is_the_file_and_its_hash(tmp_path, spool_mode, length, sizes):
    folder = direct_io_folder(tmp_path) if spool_mode == "direct" else tmp_path
    data = random.Random(length).randbytes(length)
    file = HashingSpool(dir=str(folder))
    assert (file.direct is not None) == (spool_mode == "direct")
    for piece in pieces(data, sizes):
        assert file.write(memoryview(piece)) == len(piece)
        file.file.flush()  # as pynetdicom does after every fragment
    assert file.checksum() is None  # not before it is on disk
    assert file.sync() and file.sync()  # once, then already done
    file.close()
    assert Path(file.name).read_bytes() == data
    assert file.size == length and file.head == data[:HEAD_BYTES]
    assert file.checksum() == hashlib.sha256(data).hexdigest()


def test_complete_makes_the_file_readable_before_it_is_synced(tmp_path):
    folder = direct_io_folder(tmp_path)
    data = random.Random(2).randbytes(CHUNK + 12_345)
    file = HashingSpool(dir=str(folder))
    file.write(data)
    assert os.path.getsize(file.name) == CHUNK  # only whole chunks so far
    file.complete()
    assert Path(file.name).read_bytes() == data
    assert file.sync() and file.checksum() == hashlib.sha256(data).hexdigest()
    file.close()


def test_a_spool_that_cannot_reach_the_disk_fails_for_good(tmp_path):
    folder = direct_io_folder(tmp_path)
    file = HashingSpool(dir=str(folder))
    file.write(b"x" * 10_000)
    readonly = os.open(os.devnull, os.O_RDONLY)
    os.dup2(readonly, file.direct.fd)  # a descriptor that cannot be written: the last write fails
    os.close(readonly)
    assert not file.sync() and file.failed
    assert not file.sync() and file.checksum() is None  # not tried again
    file.close()


def test_buffers_are_reused(tmp_path):
    folder = direct_io_folder(tmp_path)
    first = HashingSpool(dir=str(folder))
    buffer = first.direct._buffer
    first.close()
    second = HashingSpool(dir=str(folder))
    assert second.direct._buffer is buffer  # the closed one's, not a new mapping
    second.close()


def test_a_spool_on_a_file_system_without_direct_io_is_an_ordinary_file():
    shm, probe = Path("/dev/shm"), None
    if shm.is_dir():
        name = shm / f"pacs-probe-{os.getpid()}"
        probe = DirectFile.create(str(name), hashlib.sha256())
        if probe is not None:
            probe.close()
        name.unlink(missing_ok=True)
    if not shm.is_dir() or probe is not None:
        pytest.skip("/dev/shm is missing or takes O_DIRECT (tmpfs does since Linux 6.6): no file system here "
                    "to try the fallback on")
    file = HashingSpool(dir=str(shm))
    try:
        assert file.direct is None
        file.write(b"abc")
        assert file.sync() and Path(file.name).read_bytes() == b"abc"
    finally:
        file.close()
        os.unlink(file.name)


class Received:
    """A spool whose data set is still being written when store() starts, as in a receiver:
    the file holds only its first part until sync() writes the rest."""

    def __init__(self, path: Path, data: bytes, head_size: int) -> None:
        self.path, self.data, self.size = path, data, len(data)
        self.head = data[:head_size]
        self.synced = False
        path.write_bytes(data[:head_size])

    def sync(self) -> bool:
        if not self.synced:
            self.path.write_bytes(self.data)
            self.synced = True
        return True

    def checksum(self) -> str | None:
        return None


def test_read_header_waits_for_the_file_beyond_the_head(tmp_path):
    source = ct_file(tmp_path / "source.dcm", private_bytes=100_000)  # a header larger than the head
    data = source.read_bytes()
    expected = read_header(source)
    received = Received(tmp_path / "spooled.dcm", data, 300)
    header = read_header(received.path, spooled=received)
    assert received.synced and header.SOPInstanceUID == expected.SOPInstanceUID
