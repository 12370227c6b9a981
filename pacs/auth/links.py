"""Shared links: a study shown to someone without an account, read-only, for a while, audited.

One mechanism, two uses (:data:`PURPOSES`):

- ``consultation`` (远程会诊): an outside expert opens ``/c/{token}`` and gets the viewer on
  that one study; every DICOMweb request the viewer makes carries the link (a cookie set when
  the link is opened) and is allowed for that study's UIDs alone (:func:`allows`);
- ``film`` (云胶片): the patient opens ``/s/{token}`` on a phone: the exam, the final report and
  its key images (:mod:`pacs.web.links`).

A link's token is signed with HMAC (itsdangerous, under the server's secret key, the one that
signs session cookies) and says the link's id, the study, the purpose and when it expires, so
it can't be forged, widened or prolonged, and checking it needs no database. Each link issued
through the API is also a row of :class:`SharedLink` (who made it, when; revoked or not); a
revoked link is refused within :data:`CACHE_SECONDS` on a running server. Making a link,
opening it and revoking it are audited (PS3.15 A.5.3): every request it then makes is audited
as any other DICOMweb read is (:mod:`pacs.audit.http`), under the user ``link:{id}``.

Example::

    url = issue_link(settings, "1.2.840.1", "film", timedelta(days=30))
    # https://pacs.hospital.cn/s/WyJ...  (printed as a QR code on the report)
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer
from sqlmodel import Field, Session, SQLModel

from pacs.db import UTCDateTime, utcnow

SALT = "pacs.link"
COOKIE = "pacs_link"  # the consultation's credential in the expert's browser
CONSULTATION = "consultation"
FILM = "film"
PURPOSES = {CONSULTATION: "/c/", FILM: "/s/"}  # purpose → the path its link opens
MIN_TTL = timedelta(minutes=5)
MAX_TTL = timedelta(days=366)
CACHE_SECONDS = 5.0  # how long a link found not revoked is trusted without the database
UID = r"[0-9]+(?:\.[0-9]+)*"
STUDY_PATH = re.compile(rf"^/dicomweb/studies/({UID})(?:/.*)?$")
SEARCHES = frozenset({"/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances"})
READ_METHODS = frozenset({"GET", "HEAD"})


class LinkError(ValueError):
    """A link that can't be made as asked (an unknown purpose, a lifetime out of bounds)."""


class SharedLink(SQLModel, table=True):
    """A link issued for a study; only this module writes it."""

    __tablename__ = "shared_link"

    id: str = Field(primary_key=True, max_length=32)
    study_instance_uid: str = Field(index=True, max_length=64)  # (0020,000D) UI
    purpose: str = Field(max_length=16)
    created_by: str = Field(default="", max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_by: str = Field(default="", max_length=128)


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: one study, for one purpose, until ``expires``."""

    link_id: str
    study_instance_uid: str
    purpose: str
    expires: datetime

    @property
    def user(self) -> str:
        """The audit log's user for what the link does."""
        return f"link:{self.link_id}"


def _serializer(key: bytes) -> URLSafeSerializer:
    return URLSafeSerializer(key, salt=SALT)


def secret_key(settings: Any) -> bytes:
    """The server's secret key (:func:`pacs.auth.sessions.load_or_create_key`)."""
    from pacs.auth.sessions import load_or_create_key

    return load_or_create_key(settings.session_key_file)


def make_token(key: bytes, grant: Grant) -> str:
    return _serializer(key).dumps([grant.link_id, grant.study_instance_uid, grant.purpose,
                                   int(grant.expires.timestamp())])


def read_token(key: bytes, token: str, *, now: datetime | None = None) -> Grant | None:
    """The grant a token carries, or None: forged, altered, malformed or expired."""
    try:
        link_id, study, purpose, expires = _serializer(key).loads(token)
        grant = Grant(str(link_id), str(study), str(purpose), datetime.fromtimestamp(int(expires), UTC))
    except (BadSignature, TypeError, ValueError, OverflowError, OSError):
        return None
    if grant.purpose not in PURPOSES or grant.expires <= (now or utcnow()):
        return None
    return grant


def link_url(settings: Any, grant: Grant, token: str, *, base_url: str | None = None) -> str:
    """Where the link opens: under ``public_url`` (where set) or ``base_url``."""
    base = (settings.public_url or base_url or f"http://localhost:{settings.http_port}").rstrip("/")
    return f"{base}{PURPOSES[grant.purpose]}{token}"


def new_grant(study_instance_uid: str, purpose: str, ttl: timedelta, *, now: datetime | None = None) -> Grant:
    if purpose not in PURPOSES:
        raise LinkError(f"purpose {purpose!r} is not one of {', '.join(PURPOSES)}")
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise LinkError(f"a link lasts from {MIN_TTL} to {MAX_TTL.days} days")
    if not re.fullmatch(UID, study_instance_uid) or len(study_instance_uid) > 64:
        raise LinkError(f"{study_instance_uid!r} is not a Study Instance UID (PS3.5 9.1)")
    return Grant(secrets.token_urlsafe(12), study_instance_uid, purpose,
                 ((now or utcnow()) + ttl).replace(microsecond=0))


def issue(settings: Any, study_instance_uid: str, purpose: str, ttl: timedelta, *,
          session: Session | None = None, created_by: str = "", base_url: str | None = None) -> tuple[Grant, str]:
    """:func:`issue_link`, with the link's grant as well as its URL."""
    grant = new_grant(study_instance_uid, purpose, ttl)
    if session is not None:
        session.add(SharedLink(id=grant.link_id, study_instance_uid=study_instance_uid, purpose=purpose,
                               created_by=created_by, expires_at=grant.expires))
    return grant, link_url(settings, grant, make_token(secret_key(settings), grant), base_url=base_url)


def issue_link(settings: Any, study_instance_uid: str, purpose: str, ttl: timedelta, *,
               session: Session | None = None, created_by: str = "", base_url: str | None = None) -> str:
    """A link to ``study_instance_uid`` for ``purpose`` lasting ``ttl``: its URL.

    With ``session``, the link is kept as a :class:`SharedLink` row (listed, revocable) in that
    unit of work, which the caller commits; without, it is only signed (valid until it expires).
    Raises :class:`LinkError` for a purpose or a lifetime out of bounds.
    """
    return issue(settings, study_instance_uid, purpose, ttl, session=session, created_by=created_by,
                 base_url=base_url)[1]


def url_of(settings: Any, link: SharedLink, *, base_url: str | None = None) -> str:
    """A kept link's URL again (its token is made from the row: the same id, study, purpose and
    expiry sign to the same token)."""
    grant = Grant(link.id, link.study_instance_uid, link.purpose, link.expires_at.replace(microsecond=0))
    return link_url(settings, grant, make_token(secret_key(settings), grant), base_url=base_url)


def revoke(session: Session, link_id: str, *, by: str) -> SharedLink | None:
    """Revoke a kept link (None: no such link); revoking twice keeps the first time."""
    link = session.get(SharedLink, link_id)
    if link is not None and link.revoked_at is None:
        link.revoked_at = utcnow()
        link.revoked_by = by
        session.add(link)
    return link


def is_revoked(session: Session, link_id: str) -> bool:
    link = session.get(SharedLink, link_id)
    return link is not None and link.revoked_at is not None


def allows(grant: Grant, method: str, path: str, query: Mapping[str, str] | Any) -> bool:
    """Whether a request made with ``grant`` may go ahead: a read of the grant's study alone.

    - WADO-RS of the study and anything in it: ``/dicomweb/studies/{uid}/…`` (PS3.18 10.4);
    - QIDO-RS whose ``StudyInstanceUID`` key is the study's UID, and nothing wider (PS3.18 10.6);
    - the viewer's page opened on a study (``/viewer/viewer…``), not its study list.
    Nothing that writes (STOW-RS, the API) and no other page.
    """
    if method not in READ_METHODS:
        return False
    match = STUDY_PATH.match(path)
    if match:
        return match.group(1) == grant.study_instance_uid
    if path in SEARCHES:
        values = query.getlist("StudyInstanceUID") if hasattr(query, "getlist") else [query.get("StudyInstanceUID")]
        return values == [grant.study_instance_uid]
    return grant.purpose == CONSULTATION and path.startswith("/viewer/")


class Checker:
    """Token → grant for the gate (:class:`pacs.auth.access.Gate`): the signature checked each
    time, revocation looked up at most once per :data:`CACHE_SECONDS` per link."""

    def __init__(self, key: bytes, db: Any) -> None:
        self.key = key
        self.db = db
        self._kept: dict[str, tuple[bool, float]] = {}
        self._lock = threading.Lock()

    def grant(self, token: str, *, memory_only: bool = False) -> Grant | None:
        """The token's grant, None when it is invalid, expired or revoked; raises LookupError
        where ``memory_only`` and revocation would need the database."""
        grant = read_token(self.key, token)
        if grant is None:
            return None
        with self._lock:
            kept = self._kept.get(grant.link_id)
        if kept is None or kept[1] < time.monotonic():
            if memory_only:
                raise LookupError(grant.link_id)
            with Session(self.db.engine) as session:
                revoked = is_revoked(session, grant.link_id)
            with self._lock:
                if len(self._kept) > 4096:
                    self._kept.clear()
                self._kept[grant.link_id] = (revoked, time.monotonic() + CACHE_SECONDS)
            kept = (revoked, 0.0)
        return None if kept[0] else grant

    def forget(self, link_id: str) -> None:
        with self._lock:
            self._kept.pop(link_id, None)


__all__ = ["CONSULTATION", "COOKIE", "FILM", "Checker", "Grant", "LinkError", "SharedLink", "allows",
           "issue", "issue_link", "read_token", "revoke"]
