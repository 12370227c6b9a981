"""The tables of who may log in: users (people) and API tokens (systems).

Only :mod:`pacs.auth.accounts` writes them. Neither holds a secret in a form that could be
used: passwords as argon2id hashes (RFC 9106), tokens as SHA-256 digests of their 256 random
bits (a token is never typed by a person, so a fast digest of it is as safe as a slow one).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON
from sqlmodel import Field, SQLModel

from pacs.db import UTCDateTime, utcnow


class User(SQLModel, table=True):
    """A person who logs in, with the roles of :mod:`pacs.auth.roles`."""

    __tablename__ = "app_user"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(unique=True, max_length=64)
    display_name: str = ""
    password_hash: str = ""  # argon2id; "" for a user who logs in only through single sign-on
    roles: list[str] = Field(default_factory=list, sa_type=JSON)
    language: str = ""  # zh-CN or en; "" for the site's default
    disabled: bool = False
    failed_logins: int = 0  # consecutive, since the last success
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    session_epoch: int = 0  # raised on a password change or disable: every open session ends
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiToken(SQLModel, table=True):
    """A bearer token of a system (the HIS, the platform, a script) and the scopes it was given."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    client: str = Field(index=True, max_length=128)
    digest: str = Field(unique=True, max_length=64)  # SHA-256 of the token, hex
    prefix: str = Field(default="", max_length=16)  # its first characters, to tell tokens apart in a list
    scopes: list[str] = Field(default_factory=list, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
