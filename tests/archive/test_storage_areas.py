"""Every storage area kind behind one protocol: a local folder, an S3 bucket on moto's loopback
server, and tape-like tar containers."""

from __future__ import annotations

import hashlib
import os
import tarfile
import uuid

import pytest

from pacs.archive.storage import FilesystemArea
from pacs.archive.storage.container import ContainerArea
from pacs.archive.storage.s3 import S3Area
from tests.archive.s3server import moto_s3  # noqa: F401  (fixture)


@pytest.fixture(params=["filesystem", "s3", "container"])
def area(request, tmp_path):
    if request.param == "filesystem":
        return FilesystemArea("fs", tmp_path / "fs")
    if request.param == "container":
        return ContainerArea("tape", tmp_path / "tape")
    server = request.getfixturevalue("moto_s3")
    s3 = S3Area("s3", f"bucket-{uuid.uuid4().hex[:8]}", prefix="pacs/", endpoint_url=server.url,
                access_key="testing", secret_key="testing", region="us-east-1")
    s3.ensure_bucket()
    return s3


def test_create_read_range_remove_by_key(area, tmp_path):
    data = os.urandom(300_000)
    source = tmp_path / "object.dcm"
    source.write_bytes(data)
    from_file = area.put_file(source)
    from_bytes = area.put_bytes(b"second object")
    assert source.exists()  # copied, not moved
    assert from_file.key != from_bytes.key
    assert (from_file.size, from_file.checksum) == (len(data), hashlib.sha256(data).hexdigest())
    assert from_bytes.checksum == hashlib.sha256(b"second object").hexdigest()

    assert area.read(from_file.key) == data
    assert area.read_range(from_file.key, 0, 10) == data[:10]
    assert area.read_range(from_file.key, 123_456, 1000) == data[123_456:124_456]
    assert area.read_range(from_file.key, len(data) - 5, 100) == data[-5:]  # clipped at the end
    with area.open(from_file.key) as handle:
        assert handle.read() == data
    assert area.checksum(from_file.key) == from_file.checksum
    assert area.exists(from_file.key) and area.exists(from_bytes.key)
    assert {from_file.key, from_bytes.key} <= set(area.keys())
    assert area.free_bytes() > 0

    area.remove(from_file.key)
    assert not area.exists(from_file.key)
    assert from_file.key not in set(area.keys())
    with pytest.raises(FileNotFoundError):
        area.read(from_file.key)
    with pytest.raises(FileNotFoundError):
        area.checksum(from_file.key)
    assert area.read(from_bytes.key) == b"second object"


def test_put_file_may_move(area, tmp_path):
    source = tmp_path / "moved.dcm"
    source.write_bytes(b"x" * 1000)
    stored = area.put_file(source, move=True)
    assert not source.exists()
    assert area.read(stored.key) == b"x" * 1000


def test_checksum_is_of_the_bytes_held_now(area, tmp_path):
    stored = area.put_bytes(b"original bytes")
    if isinstance(area, FilesystemArea):
        area.path(stored.key).write_bytes(b"damaged bytes!")
    elif isinstance(area, S3Area):
        area.client.put_object(Bucket=area.bucket, Key=area.prefix + stored.key, Body=b"damaged bytes!")
    else:
        container, member = area.split(stored.key)
        path = area.tar_path(container)
        raw = bytearray(path.read_bytes())
        offset = raw.index(b"original bytes")
        raw[offset:offset + 8] = b"damaged!"
        path.write_bytes(bytes(raw))
    assert area.checksum(stored.key) != stored.checksum


def test_container_packs_a_study_into_one_tar(tmp_path):
    area = ContainerArea("tape", tmp_path / "tape")
    files = []
    for number in range(5):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(os.urandom(1000 + number))
        files.append(path)
    stored = area.put_many(files + [b"in memory"])
    containers = {key.split("/")[0] for key in (s.key for s in stored)}
    assert len(containers) == 1
    [container] = containers
    with tarfile.open(area.tar_path(container)) as tar:  # any tar tool reads it
        assert len(tar.getnames()) == 6
    read = dict(area.read_container(container))
    assert [read[s.key] for s in stored] == [p.read_bytes() for p in files] + [b"in memory"]
    assert dict(area.read_container(container, {stored[2].key.split("/")[1]})) == {stored[2].key: files[2].read_bytes()}
    for item in stored[:-1]:
        area.remove(item.key)
    assert area.tar_path(container).exists()  # written once: the container stays while a member does
    assert list(area.keys()) == [stored[-1].key]
    area.remove(stored[-1].key)
    assert not area.tar_path(container).exists() and list(area.keys()) == []


def test_container_unfinished_write_is_tidied(tmp_path):
    area = ContainerArea("tape", tmp_path / "tape")
    kept = area.put_bytes(b"kept")
    (area.incoming / "half.tar").write_bytes(b"partial")
    orphan = area.root / "ab" / "abcdef.tar"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"tar without its index")
    assert area.tidy() == 2
    assert not orphan.exists() and area.read(kept.key) == b"kept"
