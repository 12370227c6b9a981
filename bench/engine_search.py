#!/usr/bin/env python
"""The message browser's search (``/engine/messages``) at 1,000,000 stored messages: the time of
the search the page runs (its count and its first page of 100, newest first), p50/p95/p99 per
kind of search, in process on the migrated schema, then over HTTP against ``pacs serve`` on the
same store, as a logged-in analyst's browser asks for the page.

Builds a message store of its own: ``--messages`` rows as the channel leaves them, from three
senders (an IHE HIS, a Chinese HIS sending GB 18030, a FHIR client), ADT^A04/A08, ORM^O01 and
ServiceRequest in proportion, spread over ``--days`` days; 1 % refused (ERROR, nothing mapped,
with the patient ID and accession number the channel reads from a refused message's raw text),
the rest applied; each with a raw message of ~600 bytes holding its patient ID, accession
number and a Chinese name. Rows go in
the fast way each database has: COPY on PostgreSQL, ``executemany`` on SQLite. Then times
:func:`pacs.integration.message_store.search` (the function the page calls, on a fresh session
per search, as a request has) for searches drawn at random from the rows:

- ``control_id``: one message by MSH-10;
- ``accession``: one order's messages by accession number;
- ``accession_refused``: the same for a message refused before it was mapped;
- ``patient_id``: one patient's messages;
- ``errors_today``: status ERROR, type ORM, the last 24 hours;
- ``text_hour``: a Chinese name in the raw text, within one hour (a scan of that hour).

Each search must find the row it was drawn from. The goal: control ID and accession under 100 ms.

Over HTTP (``--http-queries`` of each kind; ``--no-http`` leaves it out): ``pacs serve`` is
started on the store, an analyst logs in through ``/login`` and ``GET /engine/messages`` is
asked with the same filters; the figures are the server's own time for the search (its
``Server-Timing: search;dur=`` header), for the whole page (``page;dur=``, the search and the
rendering of up to 100 rows), and the request's round trip as the client sees it.

Run from the project root::

    .venv/bin/python bench/engine_search.py                        # SQLite, 1,000,000 messages
    .venv/bin/python bench/engine_search.py --database-url postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/engine_search.py --messages 100000 --queries 100

``--database-url`` names a PostgreSQL server to connect to as an administrator; the benchmark
creates a database of its own there and drops it at the end.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_model, git_state, load_average, memory_gb

BATCH = 20_000
REFUSED_SAMPLE = 50  # accession_refused searches
NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵丽", "黄敏", "周杰", "吴婷", "欧阳娜娜", "司马光"]
COLUMNS = ("received_at", "source", "peer", "endpoint", "sending_application", "sending_facility",
           "receiving_application", "receiving_facility", "control_id", "message_type", "version", "charset",
           "raw", "status", "stage", "error", "mapped", "applied", "ack_code", "response", "patient_id",
           "accession_number", "reprocess_of", "processed_at")


def rows(count: int, days: int, seed: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    start = now - timedelta(days=days)
    step = (now - start) / count
    for i in range(count):
        at = start + step * i
        kind = rng.random()
        patient = f"P{rng.randrange(200_000):07d}"
        accession = f"A{i:08d}"
        name = NAMES[i % len(NAMES)]
        refused = rng.random() < 0.01
        if kind < 0.45:
            application, facility, mtype, codec, version = "HIS", "IHE_OP", "ORM^O01", "utf-8", "2.3.1"
        elif kind < 0.75:
            application, facility, mtype, codec, version = "WINNING", "HIS_CN", "ADT^A08", "gb18030", "2.4"
        elif kind < 0.9:
            application, facility, mtype, codec, version = "HIS", "IHE_OP", "ADT^A04", "utf-8", "2.3.1"
        else:
            application, facility, mtype, codec, version = "", "", "ServiceRequest", "utf-8", ""
        control = f"M{i:09d}"
        raw = (f"MSH|^~\\&|{application}|{facility}|PACS|RADIOLOGY|{at:%Y%m%d%H%M%S}||{mtype}|{control}|P|{version}\r"
               f"PID|1||{patient}^^^HOSP^PI||{name}^^^^^^L||19800101|F|||建国路{i % 100}号^^北京\r"
               f"PV1|1|O|RAD^^^HOSP||||D001^医生^一\r"
               f"ORC|NW|PL{i:08d}^HIS|||SC||^^^{at:%Y%m%d%H%M%S}^^R\r"
               f"OBR|1|PL{i:08d}^HIS||CT0001^胸部CT平扫^HOSP|||||||||||D002^王^五||{accession}|RP{i}|SPS{i}||||CT\r"
               ).encode(codec)
        yield {
            "received_at": at, "source": "mllp" if application else "fhir", "peer": "10.0.0.8", "endpoint": "mllp",
            "sending_application": application, "sending_facility": facility, "receiving_application": "PACS",
            "receiving_facility": "RADIOLOGY", "control_id": control, "message_type": mtype, "version": version,
            "charset": "GB18030" if codec == "gb18030" else "UNICODE UTF-8", "raw": raw,
            "status": "ERROR" if refused else "PROCESSED", "stage": "parsed" if refused else "applied",
            "error": "AE 103 Table value not found at OBR-27.6" if refused else None,
            "mapped": None, "applied": None, "ack_code": "AE" if refused else "AA",
            "response": f"MSH|^~\\&|PACS|RADIOLOGY|{application}|{facility}|||ACK^O01|ACK{i}|P|2.3.1\rMSA|AA|{control}\r",
            "patient_id": patient,  # a refused message's too: read from its raw text (Channel._search_keys)
            "accession_number": accession if mtype.startswith(("ORM", "Service")) else "",
            "reprocess_of": None, "processed_at": at,
        }


def populate(url: str, count: int, days: int, seed: int) -> float:
    from pacs.db import Database

    db = Database(url)
    db.migrate()
    db.dispose()
    started = time.perf_counter()
    if url.startswith("sqlite"):
        connection = sqlite3.connect(url.split("///", 1)[1])
        connection.execute("PRAGMA journal_mode=WAL")
        batch: list[tuple[Any, ...]] = []
        insert = f"INSERT INTO message ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        for row in rows(count, days, seed):
            row = {**row, "received_at": row["received_at"].strftime("%Y-%m-%d %H:%M:%S.%f"),
                   "processed_at": row["processed_at"].strftime("%Y-%m-%d %H:%M:%S.%f")}
            batch.append(tuple(row[c] for c in COLUMNS))
            if len(batch) >= BATCH:
                connection.executemany(insert, batch)
                connection.commit()
                batch.clear()
        if batch:
            connection.executemany(insert, batch)
        connection.commit()
        connection.execute("ANALYZE")
        connection.close()
    else:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
            with connection.cursor() as cursor, cursor.copy(f"COPY message ({', '.join(COLUMNS)}) FROM STDIN") as sink:
                for row in rows(count, days, seed):  # timestamps as naive UTC, as UTCDateTime keeps them
                    row = {**row, "received_at": row["received_at"].replace(tzinfo=None),
                           "processed_at": row["processed_at"].replace(tzinfo=None)}
                    sink.write_row(tuple(row[c] for c in COLUMNS))
            connection.commit()
            connection.execute("ANALYZE message")
    return time.perf_counter() - started


def searches(count: int, days: int, seed: int, queries: int) -> dict[str, list[tuple[dict[str, Any], str]]]:
    """Per kind, ``queries`` searches with the control ID of a row each must find."""
    rng = random.Random(seed + 1)
    chosen = sorted(rng.sample(range(count), queries))
    chosen_set = set(chosen)
    wanted: dict[int, dict[str, Any] | None] = {i: None for i in chosen}
    refused: list[tuple[int, dict[str, Any]]] = []  # a sample of the refused ones too (1 % of all)
    for i, row in enumerate(rows(count, days, seed)):
        if i in wanted:
            wanted[i] = row
        elif row["status"] == "ERROR":
            if len(refused) < REFUSED_SAMPLE:
                refused.append((i, row))
            elif (slot := rng.randrange(i)) < REFUSED_SAMPLE:
                refused[slot] = (i, row)
    wanted.update(dict(refused))
    out: dict[str, list[tuple[dict[str, Any], str]]] = {k: [] for k in
                                                         ("control_id", "accession", "accession_refused",
                                                          "patient_id", "errors_today", "text_hour")}
    now = datetime.now(UTC)
    for i, row in wanted.items():
        assert row is not None
        control = row["control_id"]
        if row["status"] == "ERROR" and row["accession_number"]:  # never mapped; its key kept
            out["accession_refused"].append(({"accession_number": row["accession_number"]}, control))
        if i not in chosen_set:
            continue
        out["control_id"].append(({"control_id": control}, control))
        accession = f"A{i:08d}"
        if row["status"] != "ERROR" and row["message_type"].startswith(("ORM", "Service")):
            out["accession"].append(({"accession_number": accession}, control))
        patient = row["raw"].decode("gb18030" if row["charset"] == "GB18030" else "utf-8").split("PID|1||")[1].split("^")[0]
        out["patient_id"].append(({"patient_id": patient, "limit": 100}, ""))
        out["errors_today"].append(({"status": "ERROR", "message_type": "ORM", "since": now - timedelta(days=1)}, ""))
        at = row["received_at"]
        out["text_hour"].append(({"text": NAMES[i % len(NAMES)], "since": at - timedelta(minutes=30),
                                  "until": at + timedelta(minutes=30)}, control))
    return out


def run(url: str, kinds: dict[str, list[tuple[dict[str, Any], str]]]) -> dict[str, list[float]]:
    from pacs.db import Database
    from pacs.integration import message_store

    db = Database(url)
    timings: dict[str, list[float]] = {}
    try:
        for kind, items in kinds.items():
            for params, must_find in items[:3]:  # warm the caches as a running server has them
                with db.session() as session:
                    message_store.search(session, **{"limit": 100, **params})
            for params, must_find in items:
                started = time.perf_counter()
                with db.session() as session:
                    total, found = message_store.search(session, **{"limit": 100, **params})
                timings.setdefault(kind, []).append((time.perf_counter() - started) * 1000)
                if must_find and must_find not in {m.control_id for m in found} and total <= 100:
                    raise AssertionError(f"{kind} {params}: {must_find} not found ({total} rows)")
    finally:
        db.dispose()
    return timings


HTTP_PARAMS = {"message_type": "type", "accession_number": "accession"}


def page_params(params: dict[str, Any]) -> dict[str, str]:
    """A search's filters as the page's form sends them."""
    return {HTTP_PARAMS.get(k, k): v.isoformat() if isinstance(v, datetime) else str(v)
            for k, v in params.items() if k != "limit"}


def run_http(url: str, folder: Path, kinds: dict[str, list[tuple[dict[str, Any], str]]],
             queries: int) -> dict[str, dict[str, list[float]]]:
    """The searches over HTTP against ``pacs serve`` on the store: per kind, the server's search
    time, its page time (both from ``Server-Timing``) and the client's round trip, in ms."""
    import re

    import httpx
    from sqlmodel import Session

    from bench.capture import Serve
    from pacs.auth import accounts
    from pacs.db import Database
    from pacs.settings import SHIPPED_MAPPINGS

    db = Database(url)
    with Session(db.engine) as session:
        accounts.add_user(session, username="bench-analyst", password="correct horse 1", roles=["analyst"],
                          display_name="李娜")
        session.commit()
    db.dispose()
    (folder / "data").mkdir(exist_ok=True)
    server = Serve(folder / "data", Path(SHIPPED_MAPPINGS), url)  # on the store built above
    server.start()
    out: dict[str, dict[str, list[float]]] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", timeout=60) as http:
            form = http.get("/login", params={"next": "/engine"})
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert token is not None, form.text
            logged_in = http.post("/login", data={"username": "bench-analyst", "password": "correct horse 1",
                                                  "next": "/engine", "csrf_token": token.group(1)})
            assert logged_in.status_code == 303, logged_in.text
            for kind, items in kinds.items():
                chosen = items[:queries]
                for params, _must_find in chosen[:3]:  # warm, as a running server is
                    http.get("/engine/messages", params=page_params(params))
                timings: dict[str, list[float]] = {"search": [], "page": [], "round_trip": []}
                for params, must_find in chosen:
                    started = time.perf_counter()
                    response = http.get("/engine/messages", params=page_params(params))
                    timings["round_trip"].append((time.perf_counter() - started) * 1000)
                    if response.status_code != 200:
                        log = (folder / "server.log").read_text(errors="replace")[-4000:]
                        raise AssertionError(f"HTTP {kind} {params}: {response.status_code}\n{log}")
                    server_timing = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]))
                    timings["search"].append(float(server_timing["search"]))
                    timings["page"].append(float(server_timing["page"]))
                    if must_find and kind in ("control_id", "accession", "accession_refused") \
                            and f"<td>{must_find}</td>" not in response.text:
                        raise AssertionError(f"HTTP {kind} {params}: {must_find} not in the page")
                out[kind] = timings
    finally:
        server.stop()
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--database-url", help="a PostgreSQL server, connected to as an administrator")
    parser.add_argument("--http-queries", type=int, default=100, help="searches of each kind over HTTP")
    parser.add_argument("--no-http", action="store_true", help="time the search function only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacs-engine-bench-") as folder:
        admin_url = args.database_url
        name = f"pacs_engine_bench_{int(time.time())}"
        if admin_url:
            import psycopg

            with psycopg.connect(admin_url, autocommit=True) as connection:
                connection.execute(f"CREATE DATABASE {name}")
            url = admin_url.rsplit("/", 1)[0] + f"/{name}"
            url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        else:
            url = f"sqlite:///{Path(folder) / 'pacs.db'}"
        try:
            load_seconds = populate(url, args.messages, args.days, args.seed)
            kinds = searches(args.messages, args.days, args.seed, args.queries)
            timings = run(url, kinds)
            database = "PostgreSQL" if admin_url else "SQLite"
            print(f"message browser search, {args.messages:,} messages over {args.days} days, {database}; "
                  f"loaded in {load_seconds:.0f} s")
            print(f"{'search':17} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
            for kind, values in timings.items():
                print(f"{kind:17} {len(values):5d} {statistics.median(values):8.2f} {percentile(values, 95):8.2f} "
                      f"{percentile(values, 99):8.2f} {max(values):8.2f}", flush=True)
            http_timings = {} if args.no_http else run_http(url, Path(folder), kinds, args.http_queries)
        finally:
            if admin_url:
                import psycopg

                with psycopg.connect(admin_url, autocommit=True) as connection:
                    connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    if http_timings:
        print(f"over HTTP, GET /engine/messages as a logged-in analyst, pacs serve, {args.http_queries} of each kind")
        print(f"{'search':17} {'n':>5} {'search p50/p95 ms':>18} {'page p50/p95 ms':>16} {'round trip p50/p95':>19}")
        for kind, parts in http_timings.items():
            shown = [f"{statistics.median(parts[k]):7.2f}/{percentile(parts[k], 95):<7.2f}"
                     for k in ("search", "page", "round_trip")]
            print(f"{kind:17} {len(parts['search']):5d} {shown[0]:>18} {shown[1]:>16} {shown[2]:>19}")
    print(f"machine: {cpu_model()}, {memory_gb():.0f} GB, load {load_average()}; {git_state()}")
    print("command: .venv/bin/python bench/engine_search.py " + shlex.join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
