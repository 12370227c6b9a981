"""An S3-compatible object store as a storage area (MinIO, Ceph RGW, a cloud's S3).

Objects are named ``<prefix><key>``; each carries its SHA-256 as user metadata
(``x-amz-meta-sha256``) so a listing tool can tell what it should hold, but :meth:`checksum`
always recomputes it from the bytes the store returns: the scrubber trusts no one's word.
Uploads send Content-MD5, so the store itself refuses a body damaged on the way.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pacs.archive.storage import CHUNK, UNLIMITED, Stored, new_key

MULTIPART_THRESHOLD = 64 * 1024 * 1024  # larger files go up in parts (boto3's transfer manager)


class S3Area:
    """A bucket (and a key prefix in it) on an S3-compatible endpoint."""

    def __init__(self, name: str, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, region: str | None = None,
                 max_connections: int = 32, tls_ca: Path | None = None) -> None:
        self.name = name
        self.bucket = bucket
        self.prefix = prefix
        # An https endpoint's certificate is always checked (botocore's default): against the
        # CA certificates of ``[[storage.areas]] tls_ca`` when given, else the system's.
        self._options: dict[str, Any] = {"endpoint_url": endpoint_url, "aws_access_key_id": access_key,
                                         "aws_secret_access_key": secret_key, "region_name": region or "us-east-1"}
        if tls_ca is not None:
            self._options["verify"] = str(tls_ca)
        self._max_connections = max_connections
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """One boto3 client per area (clients are thread-safe; creating one costs ~50 ms)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    config = Config(max_pool_connections=self._max_connections,
                                    retries={"max_attempts": 3, "mode": "standard"},
                                    connect_timeout=10, read_timeout=60,
                                    s3={"addressing_style": "path"},
                                    # The archive sends Content-MD5 and checks SHA-256 itself; botocore's
                                    # own CRC32 on every request and response would halve throughput.
                                    request_checksum_calculation="when_required",
                                    response_checksum_validation="when_required")
                    self._client = boto3.client("s3", config=config, **self._options)
        return self._client

    def ensure_bucket(self) -> None:
        """Create the bucket if the endpoint does not have it (a fresh MinIO, a test server)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def _name(self, key: str) -> str:
        return self.prefix + key

    # -- writing --------------------------------------------------------------------------------
    def put_file(self, source: Path, *, move: bool = False, checksum: str | None = None,
                 synced: bool = False) -> Stored:
        # the copy is hashed as it is written, whatever the caller knows
        size = source.stat().st_size
        if size < MULTIPART_THRESHOLD:
            stored = self.put_bytes(source.read_bytes())
        else:
            digest = hashlib.sha256()
            with source.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
            key = new_key()
            self.client.upload_file(str(source), self.bucket, self._name(key),
                                    ExtraArgs={"Metadata": {"sha256": digest.hexdigest()}})
            stored = Stored(key, size, digest.hexdigest())
        if move:
            source.unlink(missing_ok=True)
        return stored

    def put_bytes(self, data: bytes) -> Stored:
        key = new_key()
        checksum = hashlib.sha256(data).hexdigest()
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data, ContentMD5=md5,
                               Metadata={"sha256": checksum})
        return Stored(key, len(data), checksum)

    # -- reading --------------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        body = self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]
        return body  # type: ignore[no-any-return]  # a streaming body: read(), iter_chunks(), close()

    def read(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"].read()  # type: ignore[no-any-return]
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.name}: no object {key}") from None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        response = self.client.get_object(Bucket=self.bucket, Key=self._name(key),
                                          Range=f"bytes={start}-{start + length - 1}")
        return response["Body"].read()  # type: ignore[no-any-return]

    def local_path(self, key: str) -> Path | None:
        return None

    def as_file(self, key: str) -> BinaryIO:
        return io.BytesIO(self.read(key))

    # -- the rest -------------------------------------------------------------------------------
    def remove(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def checksum(self, key: str) -> str:
        """SHA-256 of the bytes the store returns now (a GET, streamed)."""
        digest = hashlib.sha256()
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._name(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.name}: no object {key}") from None
        for chunk in body.iter_chunks(CHUNK):
            digest.update(chunk)
        return digest.hexdigest()

    def keys(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix):]

    def free_bytes(self) -> int:
        return UNLIMITED
