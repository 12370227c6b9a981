"""What the benchmarks share: the machine facts they print, a free loopback port, the Chinese
names (surnames by frequency) their generated patients get, DCMTK findscu timed by its own log
clock, and the credentials their HTTP clients send (``pacs serve`` asks every request who it
comes from: docs/administrator.md, "Logins, roles and tokens")."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Common surnames with their rough frequency (per mille of the population), then the compound
# and polyphonic ones the pinyin rules must get right.
SURNAMES = [
    ("王", 71), ("李", 70), ("张", 67), ("刘", 54), ("陈", 46), ("杨", 31), ("黄", 25), ("赵", 23),
    ("吴", 20), ("周", 19), ("徐", 15), ("孙", 14), ("马", 13), ("朱", 12), ("胡", 12), ("郭", 11),
    ("何", 10), ("林", 10), ("高", 10), ("罗", 9), ("郑", 8), ("梁", 8), ("谢", 7), ("宋", 6), ("唐", 6),
    ("许", 6), ("韩", 6), ("冯", 5), ("邓", 5), ("曹", 5), ("彭", 5), ("曾", 5), ("肖", 5), ("田", 4),
    ("董", 4), ("潘", 4), ("袁", 4), ("蔡", 4), ("蒋", 4), ("余", 4), ("于", 4), ("杜", 4), ("叶", 4),
    ("程", 3), ("魏", 3), ("苏", 3), ("吕", 3), ("丁", 3), ("任", 3), ("卢", 3), ("姚", 3), ("沈", 3),
    ("钟", 3), ("姜", 3), ("崔", 3), ("谭", 3), ("陆", 3), ("范", 2), ("汪", 2), ("廖", 2), ("石", 2),
    ("金", 2), ("韦", 2), ("贾", 2), ("夏", 2), ("付", 2), ("方", 2), ("邹", 2), ("熊", 2), ("白", 2),
    ("孟", 2), ("秦", 2), ("邱", 2), ("侯", 2), ("江", 2), ("尹", 2), ("薛", 2), ("闫", 2), ("段", 2),
    ("雷", 2), ("龙", 1), ("黎", 1), ("史", 1), ("陶", 1), ("贺", 1), ("毛", 1), ("郝", 1), ("顾", 1),
    ("龚", 1), ("邵", 1), ("万", 1), ("覃", 1), ("武", 1), ("钱", 1), ("戴", 1), ("严", 1), ("莫", 1),
    ("孔", 1), ("向", 1), ("常", 1), ("章", 1), ("单", 1), ("解", 1), ("欧阳", 1), ("司马", 1),
    ("诸葛", 1), ("上官", 1),
]
GIVEN_NAMES = [
    "伟", "芳", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超", "霞",
    "平", "刚", "辉", "玲", "婷", "雪", "琳", "浩", "宇", "欣", "颖", "慧", "丹", "鹏", "斌", "秀英",
    "秀兰", "桂英", "建华", "国强", "晓东", "子涵", "雨桐", "浩然", "思远", "欣怡", "梓轩", "一诺",
    "宇航", "佳怡", "俊杰", "文博", "晨曦", "建国", "淑珍", "玉兰", "志强", "海燕", "红梅", "德明",
    "春燕", "立新", "永刚", "美玲", "嘉怡", "子轩", "天佑", "长春", "重阳", "娜", "楠",
]
DOCTORS = ["单^田芳", "王^建国", "李^红", "陈^立新", "刘^晓东", "张^永刚", "杨^美玲", "周^德明",
           "吴^春燕", "赵^志强", "孙^海燕", "徐^文博"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def git_state() -> str:
    """The commit the server runs, and whether the working tree differs from it under pacs/."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], check=False,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "pacs"],
                               check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return (commit or "unknown (not a git checkout)") + (" + uncommitted changes under pacs/" if dirty else "")


# findscu logs through log4cplus; this layout stamps each line with the time to the microsecond.
FINDSCU_LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.logger.dcmtk.dcmnet.responses = WARN
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%Q} %m%n
"""


def _log_clock(line: str) -> float:
    """Seconds since midnight of a findscu log line stamped HH:MM:SS.mmm.uuu."""
    hours, minutes, rest = line.split(" ", 1)[0].split(":")
    seconds, millis, micros = rest.split(".")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1e3 + int(micros) / 1e6


@dataclass
class FindscuQuery:
    """One C-FIND as findscu logged it: request to final response, its pending answers."""

    ms: float
    matches: int
    success: bool


def findscu_queries(args: list[str], files: list[Path], tmp: Path) -> tuple[list[FindscuQuery], float]:
    """Run one findscu process (``args``: model flag, AE titles, host and port) on one association
    with the query files in turn; each query timed by findscu's own log clock from "Sending Find
    Request" to "Received Final Find Response". Also the process's CPU seconds."""
    findscu = shutil.which("findscu")
    if findscu is None:
        raise RuntimeError("findscu not found (apt-get install dcmtk)")
    config = tmp / "findscu-log.cfg"
    config.write_text(FINDSCU_LOG_CONFIG)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([findscu, "-lc", str(config), *args, *map(str, files)],
                          env=dict(os.environ, TCP_NODELAY="1"), capture_output=True, timeout=600, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"findscu failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    out: list[FindscuQuery] = []
    sent, matches = 0.0, 0
    for line in (done.stdout + done.stderr).decode("utf-8", "replace").splitlines():
        if " Sending Find Request" in line:
            sent, matches = _log_clock(line), 0
        elif " Received Find Response " in line and "(Pending)" in line:
            matches += 1
        elif " Received Final Find Response" in line:
            elapsed = (_log_clock(line) - sent) % 86400  # past midnight
            out.append(FindscuQuery(elapsed * 1000, matches, "(Success)" in line))
    if not out:
        raise RuntimeError("findscu logged no query: " + done.stderr.decode(errors="replace")[-500:])
    return out, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


# -- credentials ---------------------------------------------------------------------------------

ADMIN_USER = "admin"
ADMIN_PASSWORD = "bench-admin-password"  # PACS_ADMIN_PASSWORD of every server a benchmark starts
BENCH_CLIENT = "bench"  # the client name of the benchmarks' bearer tokens
TOKEN_SECONDS = 120  # for `pacs tokens create` (a Python start and the database's migration check)


def admin_env() -> dict[str, str]:
    """The environment that makes a new server's first administrator with :data:`ADMIN_PASSWORD`."""
    return {"PACS_ADMIN_PASSWORD": ADMIN_PASSWORD}


def create_token(data_dir: Path, database_url: str | None, scopes: Sequence[str] = (), cwd: Path = ROOT) -> str:
    """A bearer token made by ``pacs tokens create`` on a server's own database, as an operator
    makes one for a system; every permission unless ``scopes`` names some."""
    if not scopes:
        from pacs.auth.roles import Permission

        scopes = [permission.value for permission in Permission]
    command = [sys.executable, "-m", "pacs.cli", "tokens", "create", "--client", BENCH_CLIENT,
               "--data-dir", str(data_dir)]
    for scope in scopes:
        command += ["--scope", scope]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    if database_url:
        env["PACS_DATABASE_URL"] = database_url
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=TOKEN_SECONDS,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pacs tokens create failed ({done.returncode}): {done.stderr[-500:]}")
    return done.stdout.strip().splitlines()[-1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(username: str, password: str) -> dict[str, str]:
    """HTTP Basic credentials (RFC 7617)."""
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")}


def session_login(base_url: str, username: str, password: str) -> tuple[str, str]:
    """Log in through the form as a browser does: the session cookie's header value and the
    session's CSRF token (for requests that change something, in ``X-CSRF-Token``)."""
    import re

    import httpx

    with httpx.Client(base_url=base_url, timeout=TOKEN_SECONDS) as browser:
        form = browser.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        if token is None:
            raise RuntimeError(f"no login form at {base_url}/login ({form.status_code})")
        done = browser.post("/login", data={"username": username, "password": password, "next": "/",
                                            "csrf_token": token.group(1)})
        home = browser.get("/")  # (the login answers 303 to it)
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text)
        session = browser.cookies.get("pacs_session")
        if session is None or csrf is None:
            raise RuntimeError(f"the login as {username} failed ({done.status_code}): {done.text[:300]}")
        return f"pacs_session={session}", csrf.group(1)
