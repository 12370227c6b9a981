"""Users and API tokens: the only code that writes :mod:`pacs.auth.models`.

Passwords are hashed with argon2id through pwdlib (RFC 9106's second recommended parameter set,
pwdlib's default); a login checks the account is enabled and not locked, then the password;
``[auth] lockout_failures`` wrong passwords in a row lock the account for ``[auth]
lockout_minutes`` (the right password is refused meanwhile, and the lock ends by itself).
Tokens are 256 random bits, shown once when made and kept as their SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from pwdlib import PasswordHash
from sqlmodel import Session, col, select

from pacs.auth.models import ApiToken, User
from pacs.auth.roles import role_table, scope_permissions
from pacs.db import utcnow

log = logging.getLogger(__name__)

USERNAME_MAX = 64
PASSWORD_MIN = 8  # NIST SP 800-63B 5.1.1.1: at least 8 characters for a memorized secret
TOKEN_BYTES = 32  # 256 bits
TOKEN_PREFIX = "pacs_"  # tells a token of this server from a JWT or another system's
SHOWN_PREFIX = 12  # characters of a token kept in the clear to tell tokens apart in a list

_hasher = PasswordHash.recommended()  # argon2id


@cache
def _dummy_hash() -> str:
    """A hash to check against when no user has the name, so that an unknown name takes as long
    as a wrong password (no telling which names exist by timing)."""
    return _hasher.hash(secrets.token_hex(16))


class AccountError(ValueError):
    """A request about accounts that can't be carried out; the message says why."""


class LoginResult(StrEnum):
    OK = "ok"
    WRONG = "wrong"  # unknown user or wrong password (not told apart to the person)
    LOCKED = "locked"
    DISABLED = "disabled"


@dataclass(frozen=True)
class Login:
    result: LoginResult
    user: User | None = None
    locked_until: datetime | None = None
    just_locked: bool = False


def hash_password(password: str) -> str:
    if len(password) < PASSWORD_MIN:
        raise AccountError(f"a password has at least {PASSWORD_MIN} characters")
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    return bool(password_hash) and _hasher.verify(password, password_hash)


def _valid_roles(roles: Iterable[str], table: dict[str, frozenset[object]]) -> list[str]:
    chosen = sorted({r.strip() for r in roles if r.strip()})
    unknown = [r for r in chosen if r not in table]
    if unknown:
        raise AccountError(f"no role {', '.join(unknown)}; the roles are {', '.join(sorted(table))}")
    return chosen


NUL = "\x00"  # no user name holds it (add_user refuses it; PostgreSQL's text refuses it outright)


def user_by_name(session: Session, username: str) -> User | None:
    """The user of that name; None for a name no user can have (a NUL, e.g. from an HTTP Basic
    header's base64, which PostgreSQL would refuse to compare)."""
    if NUL in username:
        return None
    return session.exec(select(User).where(User.username == username.strip())).first()


def add_user(session: Session, *, username: str, password: str | None, roles: Iterable[str],
             display_name: str = "", language: str = "",
             role_overrides: dict[str, list[str]] | None = None) -> User:
    name = username.strip()
    if not name or len(name) > USERNAME_MAX or any(c.isspace() or not c.isprintable() or c in ":/\\" for c in name):
        raise AccountError(f"a user name has 1 to {USERNAME_MAX} characters, none of them spaces, control "
                           "characters, ':', '/' or '\\'")
    if user_by_name(session, name) is not None:
        raise AccountError(f"user {name!r} exists already")
    user = User(username=name, display_name=display_name.strip(), language=language,
                password_hash=hash_password(password) if password else "",
                roles=_valid_roles(roles, role_table(role_overrides)))
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, user: User, password: str) -> None:
    """A new password; every session of the user ends, and a lock is lifted."""
    user.password_hash = hash_password(password)
    user.session_epoch += 1
    user.failed_logins, user.locked_until = 0, None
    session.add(user)


def set_roles(session: Session, user: User, roles: Iterable[str],
              role_overrides: dict[str, list[str]] | None = None) -> None:
    user.roles = _valid_roles(roles, role_table(role_overrides))
    session.add(user)


def set_disabled(session: Session, user: User, disabled: bool) -> None:
    """Disable (every session ends at once) or enable a user."""
    user.disabled = disabled
    if disabled:
        user.session_epoch += 1
    session.add(user)


def single_sign_on(session: Session, *, username: str, roles: Iterable[str] | None, display_name: str = "",
                   role_overrides: dict[str, list[str]] | None = None, now: datetime | None = None) -> User:
    """The user an OpenID Connect login names (:mod:`pacs.auth.oidc`), made at its first login
    with no password (it logs in by single sign-on only). ``roles``, where the identity provider
    sent them, become the user's roles; None (it sent none) leaves them as they are. A disabled
    user is returned unchanged, for the caller to refuse. The caller commits."""
    user = user_by_name(session, username)
    if user is not None and user.disabled:
        return user
    if user is None:
        user = add_user(session, username=username, password=None, roles=roles or (), display_name=display_name,
                        role_overrides=role_overrides)
    elif roles is not None:
        set_roles(session, user, roles, role_overrides)
    if display_name and not user.display_name:
        user.display_name = display_name.strip()
    user.last_login_at = now or utcnow()
    session.add(user)
    return user


def authenticate(session: Session, username: str, password: str, *, failures: int, lock_minutes: float,
                 now: datetime | None = None) -> Login:
    """Check a login and record its outcome on the account (the caller commits)."""
    now = now or utcnow()
    user = user_by_name(session, username)
    if user is None:
        _hasher.verify(password, _dummy_hash())
        return Login(LoginResult.WRONG)
    if user.disabled:
        return Login(LoginResult.DISABLED, user)
    if user.locked_until is not None and user.locked_until > now:
        return Login(LoginResult.LOCKED, user, user.locked_until)
    valid, rehashed = _hasher.verify_and_update(password, user.password_hash) if user.password_hash else (False, None)
    if not valid:
        user.failed_logins += 1
        just_locked = user.failed_logins >= failures
        if just_locked:
            user.locked_until = now + timedelta(minutes=lock_minutes)
            user.failed_logins = 0
        session.add(user)
        return Login(LoginResult.LOCKED if just_locked else LoginResult.WRONG, user, user.locked_until,
                     just_locked=just_locked)
    if rehashed is not None:  # hashed with parameters no longer recommended: hashed anew
        user.password_hash = rehashed
    user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
    session.add(user)
    return Login(LoginResult.OK, user)


# -- tokens ----------------------------------------------------------------------------------

def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(session: Session, *, client: str, scopes: Iterable[str],
                 expires_days: float | None = None) -> tuple[ApiToken, str]:
    """A new token for ``client``: the row, and the token itself (shown once, never stored)."""
    name = client.strip()
    if not name:
        raise AccountError("name the client the token is for (--client)")
    chosen = sorted({s.strip() for s in scopes if s.strip()})
    if not chosen:
        raise AccountError("give the token at least one scope (--scope), e.g. system/ServiceRequest.write")
    try:
        scope_permissions(chosen)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    row = ApiToken(client=name, digest=token_digest(token), prefix=token[:SHOWN_PREFIX], scopes=chosen,
                   expires_at=utcnow() + timedelta(days=expires_days) if expires_days else None)
    session.add(row)
    session.flush()
    return row, token


def find_token(session: Session, token: str, now: datetime | None = None) -> ApiToken | None:
    """The live token row for ``token`` (not revoked, not expired), or None."""
    row = session.exec(select(ApiToken).where(ApiToken.digest == token_digest(token))).first()
    now = now or utcnow()
    if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return row


def revoke_token(session: Session, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise AccountError(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
    return row


def tokens(session: Session) -> list[ApiToken]:
    return list(session.exec(select(ApiToken).order_by(col(ApiToken.id))))


def users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(col(User.username))))


FIRST_ADMIN = "admin"
INITIAL_PASSWORD_FILE = "initial-admin-password"
INITIAL_PASSWORD_BYTES = 12
SECRET_FILE_MODE = 0o600


def first_administrator(db: Any, settings: Any) -> str | None:
    """Make the first administrator at a start that finds no user: "admin", with
    ``PACS_ADMIN_PASSWORD``, or else with a random password written to
    ``DATA_DIR/initial-admin-password`` (readable by the server's user only) for the person
    installing the system to read and change (``pacs users passwd admin``). Returns the user
    name made, or None when there were users already."""
    with Session(db.engine) as session:
        if session.exec(select(User.id).limit(1)).first() is not None:
            return None
        given = settings.admin_password.get_secret_value() if settings.admin_password else ""
        password = given or secrets.token_urlsafe(INITIAL_PASSWORD_BYTES)
        add_user(session, username=FIRST_ADMIN, password=password, roles=["admin"],
                 display_name="Administrator", role_overrides=settings.auth.roles)
        session.commit()
    if given:
        log.warning("made the first administrator %r with the password of PACS_ADMIN_PASSWORD", FIRST_ADMIN)
        return FIRST_ADMIN
    path = Path(settings.data_dir) / INITIAL_PASSWORD_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET_FILE_MODE)
    with os.fdopen(descriptor, "w") as out:
        out.write(password + "\n")
    log.warning("made the first administrator %r; its password is in %s (log in and change it, or set "
                "PACS_ADMIN_PASSWORD before the first start)", FIRST_ADMIN, path)
    return FIRST_ADMIN
