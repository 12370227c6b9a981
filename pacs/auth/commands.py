"""``pacs users`` and ``pacs tokens``: accounts from the command line, each change audited
(Security Alert 110113 with User Security Attributes Changed 110137 or Security Roles Changed
110136, PS3.15 A.5.3.11), the operator named as the user who made it.

A running server sees a change within :data:`pacs.auth.access.CACHE_SECONDS`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from sqlmodel import Session

from pacs.audit import codes
from pacs.audit.codes import Action
from pacs.audit.service import Event, record
from pacs.auth import accounts
from pacs.auth.roles import ROLE_PERMISSIONS
from pacs.db import Database
from pacs.settings import Settings

COMMANDS = ("users", "tokens")


def add_parsers(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    users = sub.add_parser("users", help="people who log in: add, list, disable, enable, passwd, roles")
    usub = users.add_subparsers(dest="action", required=True)
    add = usub.add_parser("add", help="a new user (the password is asked for, or read from stdin)")
    common(add)
    add.add_argument("username")
    add.add_argument("--role", action="append", default=[], dest="roles",
                     help=f"a role ({', '.join(ROLE_PERMISSIONS)}); repeat for several")
    add.add_argument("--display-name", default="", help="the name pages show, e.g. 张三")
    add.add_argument("--language", choices=["zh-CN", "en"], default="", help="the user's pages' language")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--sso-only", action="store_true", help="no password: the user logs in by single sign-on")
    listing = usub.add_parser("list", help="every user with roles and state")
    common(listing)
    listing.add_argument("--json", action="store_true")
    for name, text in (("disable", "stop a user logging in (their sessions end)"), ("enable", "let a user log in again")):
        parser = usub.add_parser(name, help=text)
        common(parser)
        parser.add_argument("username")
    passwd = usub.add_parser("passwd", help="set a user's password (their sessions end, a lock is lifted)")
    common(passwd)
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    roles = usub.add_parser("roles", help="set a user's roles (all of them)")
    common(roles)
    roles.add_argument("username")
    roles.add_argument("roles", nargs="*", help=f"of {', '.join(ROLE_PERMISSIONS)}")

    tokens = sub.add_parser("tokens", help="bearer tokens of systems: create, list, revoke")
    tsub = tokens.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="a new token (printed once; keep it, it is not stored)")
    common(create)
    create.add_argument("--client", required=True, help="who it is for, e.g. HIS or platform")
    create.add_argument("--scope", action="append", default=[], dest="scopes",
                        help="a SMART scope (system/ServiceRequest.write, system/*.read) or a permission "
                             "(studies.read); repeat for several")
    create.add_argument("--expires-days", type=float, help="valid for this many days (default: until revoked)")
    tlist = tsub.add_parser("list", help="every token, without the tokens themselves")
    common(tlist)
    tlist.add_argument("--json", action="store_true")
    revoke = tsub.add_parser("revoke", help="revoke a token at once")
    common(revoke)
    revoke.add_argument("id", type=int)


def _password(args: argparse.Namespace, prompt: str = "password: ") -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(prompt)
    if getpass.getpass("again: ") != first:
        raise accounts.AccountError("the two passwords differ")
    return first


def _audit(session: Session, kind: codes.Code, action: Action, description: str, target: str) -> None:
    record(session, Event(codes.SECURITY_ALERT, action, types=(kind,), user=_operator(), user_kind="system",
                          target=target, description=description))


def _operator() -> str:
    try:
        return f"{getpass.getuser()} (command line)"
    except Exception:  # no name for this uid
        return "command line"


def run(args: argparse.Namespace, settings: Settings) -> int:
    db = Database(settings.effective_database_url)
    db.migrate()
    try:
        with Session(db.engine, expire_on_commit=False) as session:
            code = (_users if args.command == "users" else _tokens)(args, settings, session)
            session.commit()
        return code
    except accounts.AccountError as exc:
        print(f"pacs {args.command} {args.action}: {exc}", file=sys.stderr)
        return 1
    finally:
        db.engine.dispose()


def _user(session: Session, username: str) -> accounts.User:
    user = accounts.user_by_name(session, username)
    if user is None:
        raise accounts.AccountError(f"no user {username!r} (pacs users list shows them)")
    return user


def _users(args: argparse.Namespace, settings: Settings, session: Session) -> int:
    overrides = settings.auth.roles
    if args.action == "add":
        password = None if args.sso_only else _password(args)
        user = accounts.add_user(session, username=args.username, password=password, roles=args.roles,
                                 display_name=args.display_name, language=args.language, role_overrides=overrides)
        _audit(session, codes.USER_SECURITY_ATTRIBUTES_CHANGED, Action.CREATE,
               f"user {user.username} added with roles {', '.join(user.roles) or '(none)'}", user.username)
        print(f"added {user.username} ({', '.join(user.roles) or 'no role yet'})")
    elif args.action == "list":
        rows = [{"username": u.username, "display_name": u.display_name, "roles": u.roles,
                 "disabled": u.disabled, "locked_until": u.locked_until.isoformat() if u.locked_until else None,
                 "last_login_at": u.last_login_at.isoformat() if u.last_login_at else None,
                 "password": bool(u.password_hash)} for u in accounts.users(session)]
        if args.json:
            print(json.dumps(rows, ensure_ascii=False, indent=2))
        else:
            for row in rows:
                state = "disabled" if row["disabled"] else ("locked" if row["locked_until"] else "active")
                print(f"{row['username']:<20} {row['display_name']:<12} {state:<9} {','.join(row['roles'])}")
    elif args.action in ("disable", "enable"):
        user = _user(session, args.username)
        accounts.set_disabled(session, user, args.action == "disable")
        _audit(session, codes.USER_SECURITY_ATTRIBUTES_CHANGED, Action.UPDATE, f"user {user.username} {args.action}d",
               user.username)
        print(f"{user.username} {args.action}d")
    elif args.action == "passwd":
        user = _user(session, args.username)
        accounts.set_password(session, user, _password(args, f"new password for {user.username}: "))
        _audit(session, codes.USER_SECURITY_ATTRIBUTES_CHANGED, Action.UPDATE,
               f"password of {user.username} changed", user.username)
        print(f"password of {user.username} changed; their sessions have ended")
    elif args.action == "roles":
        user = _user(session, args.username)
        before = list(user.roles)
        accounts.set_roles(session, user, args.roles, overrides)
        _audit(session, codes.SECURITY_ROLES_CHANGED, Action.UPDATE,
               f"roles of {user.username}: {', '.join(before) or '(none)'} -> {', '.join(user.roles) or '(none)'}",
               user.username)
        print(f"{user.username}: {', '.join(user.roles) or 'no role'}")
    return 0


def _tokens(args: argparse.Namespace, settings: Settings, session: Session) -> int:
    if args.action == "create":
        row, token = accounts.create_token(session, client=args.client, scopes=args.scopes,
                                           expires_days=args.expires_days)
        _audit(session, codes.USER_SECURITY_ATTRIBUTES_CHANGED, Action.CREATE,
               f"token {row.id} for {row.client}: {' '.join(row.scopes)}", row.client)
        print(token)
        print(f"token {row.id} for {row.client} ({' '.join(row.scopes)}); shown only now", file=sys.stderr)
    elif args.action == "list":
        rows = [{"id": t.id, "client": t.client, "prefix": t.prefix, "scopes": t.scopes,
                 "created_at": t.created_at.isoformat(), "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                 "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                 "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None}
                for t in accounts.tokens(session)]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                state = "revoked" if row["revoked_at"] else "active"
                print(f"{row['id']:>4} {row['client']:<16} {row['prefix']}… {state:<8} {' '.join(row['scopes'])}")
    elif args.action == "revoke":
        row = accounts.revoke_token(session, args.id)
        _audit(session, codes.USER_SECURITY_ATTRIBUTES_CHANGED, Action.DELETE, f"token {row.id} of {row.client} revoked",
               row.client)
        print(f"token {row.id} of {row.client} revoked")
    return 0
