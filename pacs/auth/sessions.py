"""The browser session: a signed cookie that names the user, nothing else on the server.

The cookie holds the user's id, the user's session epoch (raised by a password change or a
disable, which ends every session at once), when the session began and when it was last used,
and the session's CSRF token; it is signed with HMAC (itsdangerous) under the server's secret
key, so it can't be forged or altered, and sent HttpOnly, SameSite=Lax and, under HTTPS,
Secure. A session ends after ``[auth] session_idle_minutes`` without a request, and after
``[auth] session_max_hours`` in any case. Requests that change something must carry the CSRF
token in an ``X-CSRF-Token`` header (or a ``csrf_token`` form field): a page of another site
can make the browser send the cookie, not read the token (OWASP's synchronizer token pattern).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer

COOKIE = "pacs_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SALT = "pacs.session"
KEY_BYTES = 32
REFRESH_SECONDS = 60  # a session's last use is written back into the cookie at most this often
KEY_FILE_MODE = 0o600


@dataclass(frozen=True)
class SessionData:
    user_id: int
    epoch: int
    issued: int  # seconds since the epoch
    seen: int
    csrf: str


def load_or_create_key(path: Path) -> bytes:
    """The server's session key, made once (random, 256 bits) and kept beside the data; a
    restart keeps sessions, and every node given the same file accepts the others' cookies."""
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        with os.fdopen(descriptor, "w") as out:
            out.write(key.hex())
            out.flush()
            os.fsync(out.fileno())
        return key


class Sessions:
    def __init__(self, key: bytes, *, idle_seconds: float, max_seconds: float) -> None:
        self.serializer = URLSafeSerializer(key, salt=SALT)
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds

    def new(self, user_id: int, epoch: int) -> tuple[str, SessionData]:
        now = int(time.time())
        data = SessionData(user_id, epoch, now, now, secrets.token_urlsafe(24))
        return self.dump(data), data

    def dump(self, data: SessionData) -> str:
        return self.serializer.dumps([data.user_id, data.epoch, data.issued, data.seen, data.csrf])

    def read(self, cookie: str, now: float | None = None) -> SessionData | None:
        """The session the cookie holds, if it is ours, unaltered and not ended."""
        try:
            user_id, epoch, issued, seen, csrf = self.serializer.loads(cookie)
        except (BadSignature, ValueError, TypeError):
            return None
        now = time.time() if now is None else now
        if now - seen > self.idle_seconds or now - issued > self.max_seconds:
            return None
        return SessionData(int(user_id), int(epoch), int(issued), int(seen), str(csrf))

    def touched(self, data: SessionData, now: float | None = None) -> str | None:
        """The cookie to send back when the session's last use is worth writing down, else None."""
        now = int(time.time() if now is None else now)
        if now - data.seen < REFRESH_SECONDS:
            return None
        return self.dump(SessionData(data.user_id, data.epoch, data.issued, now, data.csrf))


def cookie_header(value: str, *, secure: bool, max_age: int | None = None) -> str:
    """A Set-Cookie value for the session cookie (RFC 6265 4.1); ``max_age`` 0 deletes it."""
    parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)
