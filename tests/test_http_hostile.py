"""Hostile HTTP input against a real server on loopback: the requests that answered 500 (issue 18,
items 4, 5 and 8) as regression tests, and seeded, bounded mutations of FHIR, /api and DICOMweb
requests — ids, search and query parameters, methods, JSON bodies, STOW-RS multipart framing —
and hostile credentials against a server that asks who is calling.

Whatever a client sends, the answer is a 2xx or a 4xx with a reason in the protocol's own shape
(FHIR: an OperationOutcome, http.html#2.21.0.17; DICOMweb: ``{"status", "message"}``; /api:
``{"detail": ...}``), never a 5xx; the kept-alive connection goes on serving; no request writes
a traceback or an error to the log; what STOW-RS acknowledged can be retrieved afterwards.
Hostile credentials (Authorization headers empty, huge, of other schemes, Basic with base64
that is not, NUL and other control characters, tokens nearly right, cookies that are not this
server's) are each refused with 401, or 400 where the request itself is malformed; never a 5xx.

``PACS_HOSTILE_INPUTS`` sets how many inputs each seeded test sends (default
:data:`DEFAULT_INPUTS`), ``PACS_HOSTILE_SEED`` the seed; ``bench/hostile_http.py`` sends the
same inputs, 10,000 and more of each kind, to a ``pacs serve`` process.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes

import httpx
import pytest

from pacs.auth.sessions import COOKIE, SALT
from tests.helpers import DATA

DEFAULT_INPUTS = 400  # per kind in the suite; the bench sends 10,000 and more
INPUTS = int(os.environ.get("PACS_HOSTILE_INPUTS", DEFAULT_INPUTS))
SEED = os.environ.get("PACS_HOSTILE_SEED", "18")
OPEN_KINDS = ("fhir", "api", "dicomweb", "stow")  # sent with credentials that may do everything
KINDS = (*OPEN_KINDS, "credentials")  # the last: credentials that are hostile themselves

HUGE = "9" * 5000  # past int()'s 4,300 digits (sys.get_int_max_str_digits)
PAST_KEY = "9" * 25  # past 2**63 - 1, the largest number either database binds
PAST_INTEGER = str(2**31)  # past PostgreSQL's INTEGER keys, within SQLite's
DEEP = 5000  # levels of nesting: json.loads gives up near 1,000 with a RecursionError
DICOM_FILES = ("CT_small.dcm", "MR_small.dcm")  # pydicom's test files, shipped with it

# Values a careless or hostile client puts where a server expects an id, a number, a date, a
# token or a name: huge numbers, comma lists of nothing, other digits, other scripts, control
# characters, very long strings, injections of SQL, LIKE and DICOM wildcards, references,
# impossible and edge dates.
VALUES: list[str] = [
    "", " ", ",", ",,,", "a,,b", "\\,", "\\", "1", "0", "-1", "+1", "1.5", "1e309", "nan", PAST_KEY, HUGE,
    "0" * 5000 + "1", "³", "８", "٣", "8¹", "张三", "ZHANG*", "张*", "\u202e", "🩻", "\ufeff", "\x00", "a\x00b",
    "\r\n", "\t", "a" * 1025, "a" * 20000, "' OR '1'='1", "1; DROP TABLE patient; --", "%", "_", "*", "?",
    "%25", "<script>alert(1)</script>", "${jndi:ldap://x/a}", "../../etc/passwd", "Patient/1", "Patient/",
    "/", "a/b/c", "http://elsewhere/fhir/Patient/1", "Patient/" + HUGE, "|", "||", "a|b|c", "urn:oid:1.2.3",
    "urn:dicom:uid|urn:oid:" + HUGE, "2026", "2026-13-45", "2026-02-30", "9999-12-31T23:59:59", "0001-01-01",
    "ap0001", "ap9999", "eq", "ge2026-01-01", "lt" + HUGE, "２０２６", "2026-01-01T25:00",
    "2026-01-01T10:00:00+99:99", "20260101-20261231", "-", "true", "false", "null", "all", "00100010",
    "FFFFFFFF", "7FE00010", "00100010.00100020", "male", "active", "available", "revoked", "scheduled",
    "40,400,linear", "1,1", "0,0", HUGE + ",1", "1," + HUGE, "1,2,3", "1.2.840.10008.1.2.1",
]
RAW_BYTES = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"]  # not UTF-8: %FF in a URL
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
FHIR_TYPES_ELSEWHERE = ("Foo", "Observation", "patient", "Patient ", "_history", "$everything", "metadata",
                        "", HUGE)
FHIR_MODIFIERS = ("", "", "", ":exact", ":contains", ":not", ":missing", ":text", ":Patient", ":foo", ":")
FHIR_RESULT_PARAMETERS = ("_count", "_offset", "_sort", "_include", "_revinclude", "_summary", "_elements",
                          "_format", "_total")
ACCEPTS = ("", "*/*", "application/fhir+json", "application/dicom+json", "application/json;q=0",
           "application/xml", "text/html", "image/png", 'multipart/related; type="application/dicom"',
           'multipart/related; type="application/dicom"; transfer-syntax=*', "application/dicom+json;q=x",
           ",,,;;;", "a" * 5000)
API_PARAMETERS = {
    "/api/orders": ("status", "patient_id", "accession_number", "modality", "station", "scheduled", "limit",
                    "offset"),
    "/api/messages": ("type", "status", "since", "until", "patient_id", "control_id", "limit", "offset"),
    "/api/outbox": ("status", "destination", "limit", "offset"),
    "/api/audit": ("since", "until", "event", "action", "patient_id", "study_uid", "user", "outcome", "limit",
                   "offset"),
    "/api/audit/export": ("format", "since", "event", "outcome"),
}
QIDO_PARAMETERS = ("PatientName", "PatientID", "StudyDate", "StudyInstanceUID", "SeriesInstanceUID",
                   "SOPInstanceUID", "ModalitiesInStudy", "Modality", "SeriesNumber", "InstanceNumber",
                   "AccessionNumber", "00100010", "0020000D", "00100010.00100020", "NotAKeyword", "limit",
                   "offset", "includefield", "fuzzymatching", "")
RENDER_PARAMETERS = ("window", "viewport", "quality", "annotation", "iccprofile", "charset", "bogus")


def encoded(value: str | bytes) -> str:
    """A value percent-encoded as it goes into a URL (bytes that are not UTF-8 as they are)."""
    return quote_from_bytes(value, safe="") if isinstance(value, bytes) else quote(value, safe="")


@dataclass
class Probe:
    """One request to send."""

    method: str
    url: str  # path and query, percent-encoded as sent
    headers: dict[str, str | bytes] = field(default_factory=dict)
    body: bytes = b""
    without: tuple[str, ...] = ()  # the client's own headers left out (its credentials)
    raw: bytes = b""  # header lines sent byte for byte on a connection of their own (what httpx won't send)
    expected: tuple[int, ...] = ()  # the statuses it may get (none named: any 2xx or 4xx)

    @property
    def area(self) -> str:
        for prefix in ("/fhir", "/dicomweb"):
            if self.url == prefix or self.url.startswith((prefix + "/", prefix + "?")):
                return prefix[1:]
        return "api"

    def __str__(self) -> str:
        head = f"{self.method} {self.url[:200]}{'…' if len(self.url) > 200 else ''}"
        return head + (f" ({len(self.body)} bytes)" if self.body else "")


@dataclass
class Target:
    """What the inputs are made of: the server's FHIR types and search parameters (from its
    CapabilityStatement), ids and UIDs it holds, the DICOM objects STOW-RS parts carry."""

    fhir: dict[str, list[str]]
    ids: dict[str, list[str]]
    study: str
    series: str
    instance: str
    dicom: list[bytes]
    token: str = ""  # the bearer token the client sends, mutated by the credentials kind


def stow_body(parts: list[tuple[bytes, bytes]], boundary: bytes = b"hostile") -> bytes:
    """A multipart/related body of ``(headers, content)`` parts (RFC 2046 5.1.1)."""
    body = b"".join(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
                    for headers, content in parts)
    return body + b"--" + boundary + b"--\r\n"


STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=hostile'
JSON_TYPES = ("application/json", "application/fhir+json", "application/dicom+json")


def prepare(client: httpx.Client) -> Target:
    """Put an order, a patient and two instances in the archive; read back what the inputs use."""
    from pydicom.data import get_testdata_file

    order = json.loads((DATA / "fhir" / "servicerequest_contained.json").read_text(encoding="utf-8"))
    created = client.post("/fhir/ServiceRequest", json=order, headers={"Content-Type": "application/fhir+json"})
    assert created.status_code in (200, 201), created.text
    dicom = [Path(get_testdata_file(name)).read_bytes() for name in DICOM_FILES]
    stored = client.post("/dicomweb/studies", content=stow_body([(b"Content-Type: application/dicom", d)
                                                                for d in dicom]),
                         headers={"Content-Type": STOW_TYPE})
    assert stored.status_code in (200, 202), stored.text
    capability = client.get("/fhir/metadata").json()
    fhir = {r["type"]: [p["name"] for p in r.get("searchParam", [])]
            + [f"_include={v}" for v in r.get("searchInclude", [])]
            + [f"_revinclude={v}" for v in r.get("searchRevInclude", [])]
            for r in capability["rest"][0]["resource"]}
    ids: dict[str, list[str]] = {}
    for kind in ("Patient", "ServiceRequest", "ImagingStudy"):
        bundle = client.get(f"/fhir/{kind}").json()
        ids[kind] = [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
    ids["Endpoint"] = ["dicomweb"]
    [instance] = client.get("/dicomweb/instances", params={"limit": "1"}).json()
    scheme, _, token = client.headers.get("authorization", "").partition(" ")
    return Target(fhir, ids, instance["0020000D"]["Value"][0], instance["0020000E"]["Value"][0],
                  instance["00080018"]["Value"][0], dicom, token if scheme.lower() == "bearer" else "")


# -- the inputs ------------------------------------------------------------------------------

def value(rng: random.Random) -> str | bytes:
    return rng.choice(RAW_BYTES) if rng.random() < 0.05 else rng.choice(VALUES)


def query(rng: random.Random, names: list[str] | tuple[str, ...], count: int | None = None) -> str:
    pairs = []
    for _ in range(count if count is not None else rng.randint(1, 3)):
        name = rng.choice(names)
        if "=" in name:  # "_include=ImagingStudy:patient": a name with its own value
            pairs.append(name)
        else:
            pairs.append(f"{encoded(name)}={encoded(value(rng))}")
    return "&".join(pairs)


def fhir_probes(rng: random.Random, target: Target, count: int) -> Iterator[Probe]:
    """Searches with every declared parameter, modifiers and result parameters of every type;
    reads of ids that name nothing; types and paths nothing serves; every method; bodies that
    are nested too deep, not JSON, or of another media type."""
    types = list(target.fhir)
    for _ in range(count):
        roll = rng.random()
        kind = rng.choice(types) if rng.random() < 0.85 else rng.choice(FHIR_TYPES_ELSEWHERE)
        headers = {"Prefer": "handling=strict"} if rng.random() < 0.2 else {}
        if rng.random() < 0.1:
            headers["Accept"] = rng.choice(ACCEPTS)
        if roll < 0.5:
            declared = target.fhir.get(kind, ["name"])
            names = [n + rng.choice(FHIR_MODIFIERS) if "=" not in n else n for n in declared]
            names += list(FHIR_RESULT_PARAMETERS) + ["unknown", HUGE]
            yield Probe("GET", f"/fhir/{encoded(kind)}?{query(rng, names)}", headers)
        elif roll < 0.75:
            logical = rng.choice(target.ids.get(kind, ["1"])) if rng.random() < 0.3 else value(rng)
            yield Probe("GET", f"/fhir/{encoded(kind)}/{encoded(logical)}", headers)
        elif roll < 0.9:
            tail = rng.choice(["", f"/{encoded(kind)}", f"/{encoded(kind)}/1", f"/{encoded(kind)}/1/_history/1",
                               f"/{encoded(kind)}/{encoded(value(rng))}/x/y", "/metadata", "/$meta"])
            yield Probe(rng.choice(METHODS), "/fhir" + tail, headers)
        else:
            yield Probe(rng.choice(["POST", "PUT"]), rng.choice(["/fhir", "/fhir/ServiceRequest",
                                                                 f"/fhir/ServiceRequest/{encoded(value(rng))}"]),
                        {**headers, "Content-Type": rng.choice(["application/fhir+json", "application/json",
                                                                "text/plain", "application/xml", ""])},
                        json_body(rng))


def json_body(rng: random.Random) -> bytes:
    """A body no FHIR server can take: nested past any limit, cut short, not JSON, not an
    object, numbers past any column; or a resource with its id or subject made hostile."""
    depth = rng.choice([65, 1000, DEEP])
    opening, closing = rng.choice([("[", "]"), ('{"a":', "}")])
    choices = [
        (opening * depth + "1" + closing * depth).encode(),
        ('{"resourceType": "ServiceRequest", "x": ' + "[" * DEEP + "]" * DEEP + "}").encode(),
        b'{"resourceType": "ServiceRequest"', b"\xff\xfe\x00", b"[]", b"1e999", b"null", b'"x"', b"",
        json.dumps({"resourceType": "ServiceRequest", "id": rng.choice(VALUES), "status": "active",
                    "intent": "order", "subject": {"reference": "Patient/" + HUGE}}).encode(),
        json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": None}] * 3}).encode(),
    ]
    return rng.choice(choices)


def api_probes(rng: random.Random, target: Target, count: int) -> Iterator[Probe]:
    """Every /api list with its parameters made hostile; ids in paths; check-in and retry with
    hostile ids and bodies; paths and methods nothing serves."""
    for _ in range(count):
        roll = rng.random()
        if roll < 0.55:
            path = rng.choice(list(API_PARAMETERS))
            yield Probe("GET", f"{path}?{query(rng, API_PARAMETERS[path])}")
        elif roll < 0.75:
            path = rng.choice(["/api/orders/{}", "/api/messages/{}"])
            yield Probe("GET", path.format(encoded(value(rng))))
        elif roll < 0.9:
            path = rng.choice(["/api/orders/{}/arrive", "/api/messages/{}/reprocess", "/api/outbox/{}/retry"])
            order = rng.choice(target.ids["ServiceRequest"]) if rng.random() < 0.3 else value(rng)
            body = rng.choice([json_body(rng), b'{"by": "hostile", "note": "' + b"n" * 5000 + b'"}', b"{}"])
            yield Probe("POST", path.format(encoded(order)), {"Content-Type": "application/json"}, body)
        else:
            yield Probe(rng.choice(METHODS), rng.choice(["/api/orders", "/api/nothing", "/api/orders/1/x",
                                                         "/api/audit", f"/api/{encoded(value(rng))}"]))


def dicomweb_probes(rng: random.Random, target: Target, count: int) -> Iterator[Probe]:
    """QIDO-RS with hostile keys, values, limit/offset, includefield and fuzzymatching; WADO-RS
    of UIDs that are not, frames and bulk data tags that are not, rendered parameters past any
    size; Accept headers nothing satisfies; paths and methods nothing serves."""
    uids = [target.study, target.series, target.instance]
    for _ in range(count):
        roll = rng.random()
        headers = {"Accept": rng.choice(ACCEPTS)} if rng.random() < 0.2 else {}

        def uid(at: int) -> str:
            return uids[at] if rng.random() < 0.7 else encoded(value(rng))

        if roll < 0.45:
            base = rng.choice(["/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances",
                               f"/dicomweb/studies/{uid(0)}/series", f"/dicomweb/studies/{uid(0)}/instances",
                               f"/dicomweb/studies/{uid(0)}/series/{uid(1)}/instances"])
            yield Probe("GET", f"{base}?{query(rng, QIDO_PARAMETERS)}", headers)
        elif roll < 0.85:
            instance = f"/dicomweb/studies/{uid(0)}/series/{uid(1)}/instances/{uid(2)}"
            tail = rng.choice(["", "/metadata", "/rendered", "/thumbnail", f"/frames/{encoded(value(rng))}",
                               f"/frames/{encoded(value(rng))}/rendered", f"/bulkdata/{encoded(value(rng))}",
                               "/frames/1/rendered", "/bulkdata/7FE00010"])
            path = rng.choice([instance, f"/dicomweb/studies/{uid(0)}", f"/dicomweb/studies/{uid(0)}/series/{uid(1)}"])
            params = f"?{query(rng, RENDER_PARAMETERS)}" if "rendered" in tail or "thumbnail" in tail else ""
            yield Probe("GET", path + tail + params, headers)
        else:
            yield Probe(rng.choice(METHODS), rng.choice(["/dicomweb", "/dicomweb/studies", "/dicomweb/nothing",
                                                         f"/dicomweb/studies/{uid(0)}/nothing",
                                                         f"/dicomweb/studies/{uid(0)}/series/{uid(1)}"]), headers)


def stow_probes(rng: random.Random, target: Target, count: int) -> Iterator[Probe]:
    """STOW-RS requests whose multipart framing is broken: no or another boundary, one longer
    than RFC 2046 allows, parts cut short, parts that are not DICOM, part headers past any size
    or not Latin-1, preambles and epilogues, a close delimiter missing, another media type."""
    part_types = [b"Content-Type: application/dicom", b"Content-Type: application/dicom", b"",
                  b"Content-Type: text/plain", b"Content-Type: application/dicom; q=x",
                  b"Content-Type: application/dicom; transfer-syntax=1.2.3", b"garbage without a colon",
                  b"Content-Type: application/dicom\r\nX-Long: " + b"a" * 20000, "X-名: 值".encode(),
                  b"Content-Type: \xff\xfe"]
    for _ in range(count):
        parts = []
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            content = rng.choice(target.dicom)
            cut = rng.random()
            if cut < 0.2:
                content = content[:rng.randrange(len(content))]
            elif cut < 0.3:
                content = rng.choice([b"", b"not DICOM at all", b"DICM" * 100, bytes(rng.randrange(256)
                                                                                      for _ in range(300))])
            parts.append((rng.choice(part_types), content))
        body = stow_body(parts)
        roll = rng.random()
        if roll < 0.15:
            body = body[:rng.randrange(len(body) + 1)]
        elif roll < 0.25:
            body = rng.choice([b"preamble " * rng.randint(1, 20000), b""]) + body + b"epilogue"
        elif roll < 0.3:
            body = body.replace(b"\r\n", b"\n")
        elif roll < 0.35:
            body = body.replace(b"--hostile--", b"--hostile")
        content_type = rng.choice([STOW_TYPE] * 4 + [
            'multipart/related; type="application/dicom"', "multipart/related; boundary=hostile",
            'multipart/related; type="application/dicom"; boundary=other',
            'multipart/related; type="application/dicom"; boundary="hostile"',
            'multipart/related; type="application/dicom"; boundary=' + "b" * 71,
            'multipart/related; type="application/dicom+json"; boundary=hostile',
            "application/dicom", "text/plain", ""])
        study = rng.choice(["", "", f"/{target.study}", "/1.2.3", f"/{encoded(value(rng))}"])
        yield Probe("POST", "/dicomweb/studies" + study,
                    {"Content-Type": content_type} if content_type else {}, body)


LONG_CREDENTIAL = 32 * 1024  # characters: past any token, within the 64 KiB request head (pacs.server)
REFUSED = (HTTPStatus.UNAUTHORIZED, HTTPStatus.BAD_REQUEST)
LOGIN_REFUSED = (*REFUSED, HTTPStatus.TOO_MANY_REQUESTS)  # a Basic login: an address's attempts are limited
CREDENTIAL_REQUESTS = [("GET", "/api/orders"), ("GET", "/api/audit"), ("GET", "/fhir/Patient?name=zhang"),
                       ("GET", "/fhir/ImagingStudy"), ("GET", "/dicomweb/studies"), ("POST", "/fhir/ServiceRequest"),
                       ("POST", "/api/messages/1/reprocess"), ("POST", "/dicomweb/studies")]
FAR_FUTURE = 4_000_000_000  # seconds since the epoch: a session that has not ended
# Header lines httpx refuses to send: NUL and other control characters, a header folded over two
# lines (RFC 9112 5.2), a space before the colon (RFC 9112 5.1), the header twice, a scheme with
# nothing after it but spaces.
RAW_CREDENTIALS = [b"Authorization: Bearer ", b"Authorization: Basic   ", b"Authorization:  ",
                   b"Authorization: Bearer pacs_\x00abc", b"Authorization: Basic \x00", b"Authorization: \x00",
                   b"Cookie: " + COOKIE.encode() + b"=a\x00b", b"Authorization: Bearer \x01\x02\x1b\x7f",
                   b"Authorization: Bearer x\r\n y", b"Authorization: Bearer a\r\nAuthorization: Basic YTpi",
                   b"Authorization : Bearer x", b"Authorization: Basic YWRtaW46\x00", b"Cookie: \x00=\x00"]


def basic_of(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode("ascii")


def hostile_authorizations(token: str) -> list[str | bytes]:
    """Authorization headers no request may pass with: empty, huge, of other schemes, Basic with
    base64 that is not or decodes to nothing usable (NUL, no colon, not UTF-8), the client's own
    token nearly right."""
    mutated = [f"Bearer {token[:-1]}", f"Bearer {token}x", f"Bearer {token.upper()}", f"Bearer {token} {token}",
               f"Basic {token}", f"Bearer {token[::-1]}"] if token else []
    return [
        "", "Bearer", "bearer", "Bearer  x", "Bearer pacs_", "Bearer pacs_" + "A" * 43,
        "Bearer " + "x" * LONG_CREDENTIAL, "Bearer pacs_" + "9" * LONG_CREDENTIAL, "Bearer a.b.c",
        "Bearer eyJhbGciOiJub25lIn0.e30.", "Bearer,Basic", *mutated,
        "Basic", "Basic =", "Basic ===", "Basic !!!", "Basic YQ", "Basic " + "A" * LONG_CREDENTIAL,
        basic_of(b"\xff\xfe:\xfd"), basic_of(b"nocolon"), basic_of(b":"), basic_of(b"admin:"), basic_of(b":password"),
        basic_of(b"a\x00b:pw"), basic_of(b"\x00:\x00"), basic_of(b"admin\x00:x"), basic_of("张三:密码".encode()),
        basic_of(b"u" * (LONG_CREDENTIAL // 2) + b":p"), basic_of(b"a:b") + "!!", basic_of(b"a:b") + " extra",
        'Digest username="admin", realm="pacs"', "Negotiate YII=", "NTLM TlRMTVNTUAABAAAAB4IIog==", "Token x",
        "OAuth oauth_token=x", "AWS4-HMAC-SHA256 Credential=x", b"Bearer \xe9\xff", b"Basic \xff\xfe",
        b"Bearer pacs_\x80\x81", b"Bearer " + "张三".encode(),
    ]


def hostile_cookies() -> list[str | bytes]:
    """Cookies that are not a session of this server: empty, garbage, signed with another key,
    huge, twice, other applications' and the login form's."""
    from itsdangerous import URLSafeSerializer

    forged = URLSafeSerializer(b"not this server's key", salt=SALT).dumps([1, 1, FAR_FUTURE, FAR_FUTURE, "x"])
    return [f"{COOKIE}=", f"{COOKIE}=garbage", f"{COOKIE}={forged}", f"{COOKIE}=" + "a" * LONG_CREDENTIAL,
            f"{COOKIE}=a; {COOKIE}=b", "sessionid=abc; csrftoken=def", "pacs_login=x", ";;;===",
            f'{COOKIE}="quoted"', f"{COOKIE}=eyJ.x.y", f'{COOKIE}=[1,1,0,0,"x"]', f"{COOKIE}={forged.rsplit('.', 1)[0]}.",
            f"={COOKIE}", COOKIE, f"{COOKIE.upper()}=x", f"{COOKIE}=%00", f"{COOKIE}=".encode() + b"\xff\xfe"]


def is_login(authorization: str | bytes) -> bool:
    """Whether the server takes ``authorization`` as a Basic login (user:password in base64),
    which counts against the address's login attempts."""
    text = authorization.decode("latin-1") if isinstance(authorization, bytes) else authorization
    scheme, _, credentials = text.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError both are
        return False
    return True


def credentials_probes(rng: random.Random, target: Target, count: int) -> Iterator[Probe]:
    """Requests that need a permission, with hostile credentials instead of the client's: an
    Authorization header (and sometimes a cookie too), a cookie alone, or header lines httpx
    won't send. Each is refused: 401, or 400 for a request the HTTP layer can't read."""
    authorizations = hostile_authorizations(target.token)
    cookies = hostile_cookies()
    for _ in range(count):
        method, url = rng.choice(CREDENTIAL_REQUESTS)
        body = b"{}" if method == "POST" else b""
        roll = rng.random()
        if roll < 0.6:
            authorization = rng.choice(authorizations)
            headers: dict[str, str | bytes] = {"Authorization": authorization}
            if rng.random() < 0.2:
                headers["Cookie"] = rng.choice(cookies)
            yield Probe(method, url, headers, body, expected=LOGIN_REFUSED if is_login(authorization) else REFUSED)
        elif roll < 0.85:
            yield Probe(method, url, {"Cookie": rng.choice(cookies)}, body, without=("authorization",),
                        expected=REFUSED)
        else:
            raw = rng.choice(RAW_CREDENTIALS)
            value = raw.partition(b":")[2].strip()
            yield Probe(method, url, {}, body, raw=raw, expected=LOGIN_REFUSED if is_login(value) else REFUSED)


GENERATORS: dict[str, Callable[[random.Random, Target, int], Iterator[Probe]]] = {
    "fhir": fhir_probes, "api": api_probes, "dicomweb": dicomweb_probes, "stow": stow_probes,
    "credentials": credentials_probes}


# -- the checks ------------------------------------------------------------------------------

@dataclass
class Verdicts:
    """What the answers were, what was wrong with them, and what STOW-RS acknowledged."""

    statuses: Counter[int] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)  # RetrieveURLs of instances stored

    def fault(self, probe: Probe, what: str) -> None:
        self.faults.append(f"{probe}: {what}")

    def check(self, probe: Probe, response: httpx.Response) -> None:
        """A 2xx, or a 4xx with a reason in the protocol's shape; never a 5xx."""
        status = response.status_code
        self.statuses[status] += 1
        error = status >= HTTPStatus.BAD_REQUEST
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            self.fault(probe, f"{status} {response.text[:300]}")
            return
        if probe.expected and status not in probe.expected:
            self.fault(probe, f"{status}, not {' or '.join(map(str, probe.expected))}: {response.text[:200]}")
            return
        if probe.raw:  # answered by the HTTP layer (its own 400) or by the app; the status is what counts
            return
        if status == HTTPStatus.METHOD_NOT_ALLOWED and "allow" not in response.headers:
            self.fault(probe, "405 without an Allow header")
        if probe.method == "HEAD" or response.is_redirect:  # no body to check
            return
        media = response.headers.get("content-type", "").split(";")[0].strip()
        if media not in JSON_TYPES:
            if error or probe.area == "fhir":  # a multipart, an image, JSON lines: a retrieve's answer
                self.fault(probe, f"{status} with a body of {media or 'no type'}: {response.text[:200]!r}")
            return
        try:
            body = response.json()
        except ValueError:
            self.fault(probe, f"{status} with a body that is not JSON: {response.text[:200]!r}")
            return
        if error:
            self._check_error(probe, status, body)
        elif probe.area == "fhir" and not (isinstance(body, dict) and "resourceType" in body):
            self.fault(probe, f"{status}: a FHIR answer without a resourceType")
        elif probe.method == "POST" and probe.url.startswith("/dicomweb/studies") and isinstance(body, dict):
            for item in (body.get("00081199") or {}).get("Value", []):
                self.acknowledged.add(item["00081190"]["Value"][0])

    def _check_error(self, probe: Probe, status: int, body: Any) -> None:
        if probe.area == "fhir":
            issues = body.get("issue") if isinstance(body, dict) else None
            if body.get("resourceType") != "OperationOutcome" or not issues or not issues[0].get("diagnostics"):
                self.fault(probe, f"{status}: not an OperationOutcome with diagnostics: {str(body)[:200]}")
        elif probe.area == "dicomweb":
            if probe.method == "POST" and isinstance(body, dict) and "00081198" in body:
                return  # STOW-RS 409: the failed parts, each with its FailureReason (PS3.18 10.5.3)
            if not isinstance(body, dict) or body.get("status") != status or not body.get("message"):
                self.fault(probe, f"{status}: not a DICOMweb error object: {str(body)[:200]}")
        elif not isinstance(body, dict) or not body.get("detail"):
            self.fault(probe, f"{status}: not an /api error with a detail: {str(body)[:200]}")

    def check_acknowledged(self, client: httpx.Client) -> None:
        """Every instance STOW-RS said it stored is there to retrieve (its metadata)."""
        for url in sorted(self.acknowledged):
            path = "/dicomweb" + url.split("/dicomweb", 1)[1] + "/metadata"
            found = client.get(path)
            if found.status_code != HTTPStatus.OK:
                self.faults.append(f"acknowledged but not retrievable: {path} → {found.status_code}")


def client_address(response: httpx.Response) -> Any:
    """The client's end of the connection the response came on (None: closed already)."""
    try:
        return response.extensions["network_stream"].get_extra_info("client_addr")
    except OSError:
        return None


RAW_SECONDS = 60


def raw_exchange(client: httpx.Client, probe: Probe) -> httpx.Response:
    """``probe`` with its raw header lines, on a connection of its own that closes after it."""
    host, port = client.base_url.host, client.base_url.port
    head = (f"{probe.method} {probe.url} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(probe.body)}\r\n"
            "Connection: close\r\n").encode("latin-1")
    with socket.create_connection((host, port), timeout=RAW_SECONDS) as sock:
        sock.sendall(head + probe.raw + b"\r\n\r\n" + probe.body)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        body = answer.read()
    return httpx.Response(answer.status, headers=answer.getheaders(), content=body,
                          request=httpx.Request(probe.method, client.base_url.join(probe.url)))


def send(client: httpx.Client, probes: Iterator[Probe], verdicts: Verdicts) -> None:
    """Send every probe on one kept-alive connection; a reconnection means the server closed it.
    (A probe with raw header lines goes on a connection of its own.)"""
    last: tuple[Probe, Any] | None = None
    for probe in probes:
        try:
            if probe.raw:
                verdicts.check(probe, raw_exchange(client, probe))
                continue
            request = client.build_request(probe.method, probe.url, headers=probe.headers, content=probe.body or None)
            for name in probe.without:
                request.headers.pop(name, None)
            response = client.send(request)
        except (httpx.HTTPError, OSError, http.client.HTTPException) as exc:
            verdicts.fault(probe, f"no answer: {exc!r}")
            continue
        verdicts.check(probe, response)
        address = client_address(response)
        if last is not None and address != last[1]:
            verdicts.fault(last[0], "the server closed the kept-alive connection after answering")
        last = (probe, address)


# -- the log ---------------------------------------------------------------------------------

class LogWatch(logging.Handler):
    """Collects what the server logs with a traceback or as an error, from the root logger and
    uvicorn's (which does not pass its records on to the root)."""

    LOGGERS = ("", "uvicorn", "uvicorn.error")

    def __init__(self, settle: Callable[[], object] = lambda: None) -> None:
        super().__init__(logging.DEBUG)
        self.settle = settle  # what to wait for before reading: the audit writer's queue
        self.seen: list[logging.LogRecord] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record)
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)

    def problems(self) -> list[str]:
        self.settle()
        return [f"{r.name} {r.levelname}: {r.getMessage()[:300]}"
                + (f" ({r.exc_info[0].__name__})" if r.exc_info and r.exc_info[0] else "") for r in self.records]


def watching(running) -> Iterator[LogWatch]:  # type: ignore[no-untyped-def]
    """What ``running`` logs meanwhile; its audit entries are written before it is read."""
    watch = LogWatch(settle=running.server.services.audit.flush)
    loggers = [logging.getLogger(name) for name in LogWatch.LOGGERS]
    for logger in loggers:
        logger.addHandler(watch)
    yield watch
    for logger in loggers:
        logger.removeHandler(watch)


@pytest.fixture
def log_watch(server) -> Iterator[LogWatch]:  # type: ignore[no-untyped-def]
    """What ``server`` logs while the test runs."""
    yield from watching(server)


@pytest.fixture
def guarded_log_watch(guarded_server) -> Iterator[LogWatch]:  # type: ignore[no-untyped-def]
    """What ``guarded_server`` logs while the test runs."""
    yield from watching(guarded_server)


def healthy(url: str) -> bool:
    """/healthz on a new connection answers 200."""
    return httpx.get(url + "/healthz", timeout=30).status_code == HTTPStatus.OK


# -- regression tests: each of these answered 500 ---------------------------------------------

REGRESSIONS: list[tuple[str, str, int]] = [
    # (method, path and query, status)
    ("GET", f"/fhir/Patient/{HUGE}", 404),
    ("GET", f"/fhir/ServiceRequest/{HUGE}", 404),
    ("GET", f"/fhir/ImagingStudy/{HUGE}", 404),
    ("GET", f"/fhir/Endpoint/{HUGE}", 404),
    ("GET", "/fhir/ServiceRequest?subject=,,,", 400),
    ("GET", "/fhir/ServiceRequest?_id=,,,", 400),
    ("GET", "/fhir/Patient?_id=,,,", 400),
    ("GET", "/fhir/ImagingStudy?_id=,,,", 400),
    ("GET", "/fhir/ImagingStudy?basedon=,,,", 400),
    ("GET", "/fhir/Patient?gender=,,,", 400),
    ("GET", f"/fhir/Patient?_id={HUGE}", 200),
    ("GET", f"/fhir/ServiceRequest?patient={HUGE}", 200),
    ("GET", f"/fhir/ImagingStudy?basedon={HUGE}", 200),
    ("GET", f"/fhir/Patient?_count={HUGE}", 200),
    ("GET", f"/fhir/Patient?_offset={HUGE}", 200),
    ("GET", "/fhir/ServiceRequest?authored=9999-12-31T23:59:59", 400),
    ("GET", "/fhir/ServiceRequest?authored=ap0001", 400),
    ("GET", "/fhir/ImagingStudy?started=ap0001", 400),
    ("GET", "/fhir/Patient?name=" + "a" * 60000, 400),
    ("GET", "/fhir/Patient?name=%00", 400),
    ("GET", "/fhir/Patient/%00", 400),
    ("GET", f"/dicomweb/studies?limit={HUGE}", 200),
    ("GET", f"/dicomweb/studies?offset={HUGE}", 200),
    ("GET", "/dicomweb/studies?PatientID=%00", 400),
    ("GET", "/dicomweb/studies/%00/series", 400),
    ("GET", "/api/orders?patient_id=%00", 400),
    ("GET", f"/api/orders/{HUGE}", 422),
    ("GET", f"/api/messages/{HUGE}", 422),
    # PostgreSQL's "integer out of range" (schemathesis, issue 19)
    ("GET", f"/api/messages/{PAST_INTEGER}", 422),
    ("POST", f"/api/messages/{PAST_INTEGER}/reprocess", 422),
    ("GET", f"/api/orders/{PAST_INTEGER}", 422),
    ("POST", f"/api/outbox/{PAST_INTEGER}/retry", 422),
    ("GET", f"/fhir/Patient/{PAST_INTEGER}", 404),
    ("GET", f"/fhir/ServiceRequest/{PAST_INTEGER}", 404),
    ("GET", f"/fhir/ImagingStudy/{PAST_INTEGER}", 404),
    ("GET", f"/fhir/ServiceRequest?patient={PAST_INTEGER}", 200),
    ("GET", f"/fhir/Patient?_id={PAST_INTEGER}", 200),
]


def test_requests_that_answered_500_get_a_4xx_with_a_reason(server, log_watch):
    """Issue 18 item 4: ids and numbers of thousands of digits, comma lists of nothing, dates at
    the ends of the calendar, search values longer than anything searched, NUL — each is a 200
    or a 4xx in the protocol's shape on the same connection, is audited, and logs no error."""
    verdicts = Verdicts()
    with httpx.Client(base_url=server.http_url, timeout=60) as client:
        prepare(client)
        first = None
        for method, url, status in REGRESSIONS:
            probe = Probe(method, url)
            response = client.request(method, url)
            verdicts.check(probe, response)
            assert response.status_code == status, (str(probe), response.status_code, response.text[:300])
            first = first or client_address(response)
            assert client_address(response) == first, f"{probe}: the connection was closed"
    assert not verdicts.faults, verdicts.faults
    from tests.test_audit import wait_for_entries

    for kind in ("Patient", "ServiceRequest", "ImagingStudy"):  # read with an id no int() reads: audited
        assert wait_for_entries(server, where=lambda e, k=kind: (e.get("details") or {}).get("path")
                                == f"/fhir/{k}/{HUGE}"), kind
    assert wait_for_entries(server, where=lambda e: "\\u0000" in (e.get("details") or {}).get("query", ""))
    assert not log_watch.problems(), log_watch.problems()


@pytest.mark.parametrize("path", ["/fhir/ServiceRequest", "/fhir", "/fhir/ServiceRequest/{order}"])
def test_a_body_nested_5000_deep_is_a_400_operation_outcome(server, log_watch, path):
    """A JSON body nested past any resource's depth is refused before it is parsed (json.loads
    raised RecursionError: the intake answered 500 and logged it as a failed message)."""
    with httpx.Client(base_url=server.http_url, timeout=60) as client:
        target = prepare(client)
        url = path.format(order=target.ids["ServiceRequest"][0])
        for body in ("[" * DEEP + "]" * DEEP, '{"resourceType": "ServiceRequest", "a": ' + "{\"a\":" * DEEP
                     + "1" + "}" * DEEP + "}"):
            response = client.request("PUT" if "{" in path else "POST", url, content=body,
                                      headers={"Content-Type": "application/fhir+json"})
            assert response.status_code == 400, response.text[:300]
            outcome = response.json()
            assert outcome["resourceType"] == "OperationOutcome"
            assert "nests" in outcome["issue"][0]["diagnostics"]
        # /api bodies go through FastAPI, which refuses them with its own 400
        arrive = client.post(f"/api/orders/{target.ids['ServiceRequest'][0]}/arrive",
                             content="[" * DEEP + "]" * DEEP, headers={"Content-Type": "application/json"})
        assert arrive.status_code == 400 and arrive.json()["detail"]
    assert healthy(server.http_url)
    assert not log_watch.problems(), log_watch.problems()


@pytest.mark.parametrize(("method", "path", "status", "allow"), [
    ("GET", "/fhir/Foo/1", 404, None),
    ("POST", "/fhir/Foo", 404, None),
    ("DELETE", "/fhir/Observation/1", 404, None),
    ("GET", "/fhir/Patient/1/_history/1", 404, None),
    ("GET", "/fhir/a/b/c/d", 404, None),
    ("DELETE", "/fhir/Patient/1", 405, "GET"),
    ("PATCH", "/fhir/ServiceRequest/1", 405, "GET, PUT"),
    ("PUT", "/fhir/Patient/1", 405, "GET"),
    ("DELETE", "/fhir", 405, "POST"),
    ("POST", "/fhir/metadata", 405, "GET"),
    ("POST", "/fhir/Patient", 405, "GET"),
])
def test_every_fhir_error_is_an_operation_outcome(server, method, path, status, allow):
    """Issue 18 item 5: an unknown resource type (404, whatever the method), a path nothing
    serves (404) and a method an interaction lacks (405 with Allow) answer OperationOutcome
    (FHIR R4 http.html#2.21.0.17), not FastAPI's ``{"detail": ...}``."""
    response = httpx.request(method, server.http_url + path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]
    assert outcome["issue"][0]["code"] in ("not-found", "not-supported")
    assert response.headers.get("allow") == allow


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/dicomweb/nothing", 404),
    ("GET", "/dicomweb/studies/1.2.3/nothing", 404),
    ("DELETE", "/dicomweb/studies", 405),
    ("PUT", "/dicomweb/studies/1.2.3", 405),
])
def test_dicomweb_errors_of_routing_are_in_its_error_shape(server, method, path, status):
    response = httpx.request(method, server.http_url + path)
    assert response.status_code == status
    assert response.json()["status"] == status and response.json()["message"]


def test_rendering_and_frame_numbers_of_thousands_of_digits(server, log_watch):
    """Numbers in WADO-RS paths and rendering parameters are read without int() meeting 5,000
    digits: a frame past every frame is 404, a viewport or quality past any is 400."""
    with httpx.Client(base_url=server.http_url, timeout=60) as client:
        target = prepare(client)
        instance = f"/dicomweb/studies/{target.study}/series/{target.series}/instances/{target.instance}"
        assert client.get(f"{instance}/frames/{HUGE}").status_code == 404
        assert client.get(f"{instance}/frames/{HUGE}/rendered").status_code == 404
        for params in ({"viewport": f"{HUGE},{HUGE}"}, {"viewport": f"1,{HUGE}"}, {"quality": HUGE},
                       {"quality": "0" * 5000 + "50"}):
            response = client.get(f"{instance}/rendered", params=params)
            assert response.status_code == (200 if params.get("quality", "").endswith("50") else 400), params
        assert client.get(f"{instance}/rendered", params={"viewport": "16,16"}).status_code == 200
    assert not log_watch.problems(), log_watch.problems()


def test_stow_rs_framing_is_refused_with_a_reason(server, log_watch):
    """A part's headers past 16 KiB (found in one chunk, they were taken), a boundary past
    RFC 2046's 70 characters, a part Content-Type that can't be read (it failed the request):
    each is answered in DICOMweb's shape, and a preamble is not held in memory."""
    with httpx.Client(base_url=server.http_url, timeout=60) as client:
        target = prepare(client)
        ct = target.dicom[0]
        huge_header = stow_body([(b"Content-Type: application/dicom\r\nX: " + b"a" * 100000, ct)])
        response = client.post("/dicomweb/studies", content=huge_header, headers={"Content-Type": STOW_TYPE})
        assert response.status_code == 400 and "headers are longer" in response.json()["message"]
        boundary = "b" * 71
        response = client.post("/dicomweb/studies", content=stow_body([(b"Content-Type: application/dicom", ct)],
                                                                      boundary.encode()),
                               headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                        f"boundary={boundary}"})
        assert response.status_code == 400 and "RFC 2046" in response.json()["message"]
        response = client.post("/dicomweb/studies", content=stow_body([(b"Content-Type: application/dicom; q=x",
                                                                         ct)]),
                               headers={"Content-Type": STOW_TYPE})
        assert response.status_code == 409
        assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
        preamble = b"x" * (4 * 1024 * 1024) + b"\r\n" + stow_body([(b"Content-Type: application/dicom", ct)])
        assert client.post("/dicomweb/studies", content=preamble,
                           headers={"Content-Type": STOW_TYPE}).status_code in (200, 202)
    assert not log_watch.problems(), log_watch.problems()


@pytest.mark.parametrize("content", [b"not DICOM at all", "truncated"])
def test_a_refused_stow_rs_part_is_one_log_line(server, log_watch, content):
    """An expected refusal is one line in the log: store() words it; STOW-RS adds none of its own."""
    with httpx.Client(base_url=server.http_url, timeout=60) as client:
        target = prepare(client)
        part = target.dicom[0][:1000] if content == "truncated" else content
        before = len(log_watch.seen)
        response = client.post("/dicomweb/studies", content=stow_body([(b"Content-Type: application/dicom", part)]),
                               headers={"Content-Type": STOW_TYPE})
        assert response.status_code == 409
        lines = [r for r in log_watch.seen[before:] if r.levelno >= logging.WARNING]
        assert len(lines) == 1, [r.getMessage() for r in lines]
    assert not log_watch.problems(), log_watch.problems()


def test_a_client_that_closes_mid_body_leaves_one_log_line(server, log_watch, monkeypatch):
    """A STOW-RS or FHIR request whose client goes away before its body ends: the server logs
    one line, no traceback, and goes on serving (Starlette's ClientDisconnect went unhandled)."""
    monkeypatch.setattr(logging.getLogger("pacs.http"), "level", logging.INFO)
    port = int(server.http_url.rsplit(":", 1)[1])
    paths = {"/dicomweb/studies": STOW_TYPE, "/fhir/ServiceRequest": "application/fhir+json"}
    for path, content_type in paths.items():
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: pacs\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: 100000\r\n\r\n".encode() + b"--hostile\r\n\r\nDICM")
            time.sleep(0.3)

    def lines() -> list[str]:
        return [r.getMessage() for r in log_watch.seen if "closed the connection" in r.getMessage()]

    deadline = time.monotonic() + 10
    while len(lines()) < len(paths) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(line.split(":")[0] for line in lines()) == sorted(f"POST {p}" for p in paths)
    assert healthy(server.http_url)
    assert not log_watch.problems(), log_watch.problems()


# -- seeded mutations -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", OPEN_KINDS)
def test_hostile_requests_get_answers_in_the_protocols_shape(server, log_watch, kind):
    """``PACS_HOSTILE_INPUTS`` inputs of one kind, seeded: no 5xx, every error in its protocol's
    shape, one connection throughout, no traceback or error in the log, every instance STOW-RS
    acknowledged retrievable, and /healthz answers afterwards."""
    rng = random.Random(f"{SEED}-{kind}")
    verdicts = Verdicts()
    with httpx.Client(base_url=server.http_url, timeout=60) as client:
        target = prepare(client)
        send(client, GENERATORS[kind](rng, target, INPUTS), verdicts)
        verdicts.check_acknowledged(client)
    assert not verdicts.faults, "\n".join(verdicts.faults[:20])
    assert healthy(server.http_url)
    assert not log_watch.problems(), log_watch.problems()[:20]
    assert len(verdicts.statuses) > 2, verdicts.statuses  # the inputs reach several outcomes


# -- hostile credentials ---------------------------------------------------------------------

def everything_token(server) -> str:  # type: ignore[no-untyped-def]
    """A bearer token of every permission, made as ``pacs tokens create`` makes one."""
    from sqlmodel import Session

    from pacs.auth import accounts
    from pacs.auth.roles import Permission

    with Session(server.db.engine) as session:
        _, token = accounts.create_token(session, client="hostile", scopes=[p.value for p in Permission])
        session.commit()
    return token


def test_hostile_credentials_are_refused_with_401_or_400(guarded_server, guarded_log_watch):
    """``PACS_HOSTILE_INPUTS`` requests of the ``credentials`` kind, seeded, on a server that asks
    who is calling: each gets 401 (or 400, or 429 for a Basic login past the address's limit),
    never a 5xx, in the protocol's shape; the connection goes on serving; nothing in the log."""
    rng = random.Random(f"{SEED}-credentials")
    verdicts = Verdicts()
    token = everything_token(guarded_server)
    with httpx.Client(base_url=guarded_server.http_url, timeout=60, headers={"Authorization": f"Bearer {token}"}) \
            as client:
        target = prepare(client)
        send(client, GENERATORS["credentials"](rng, target, INPUTS), verdicts)
        assert client.get("/api/orders").status_code == HTTPStatus.OK  # the client's own token still serves
    assert not verdicts.faults, "\n".join(verdicts.faults[:20])
    assert verdicts.statuses[HTTPStatus.UNAUTHORIZED] and verdicts.statuses[HTTPStatus.BAD_REQUEST]
    assert healthy(guarded_server.http_url)
    assert not guarded_log_watch.problems(), guarded_log_watch.problems()[:20]


@pytest.mark.parametrize("username", ["a\x00b", "\x00", "admin\x00"])
def test_a_nul_in_a_user_name_is_a_wrong_login(guarded_server, guarded_log_watch, username):
    """A user name with NUL, from HTTP Basic's base64 or the login form, names no user: 401
    (PostgreSQL refused to compare it, and the login answered 500)."""
    url = guarded_server.http_url
    response = httpx.get(f"{url}/api/orders", headers={"Authorization": basic_of(f"{username}:pw".encode())})
    assert response.status_code == HTTPStatus.UNAUTHORIZED, response.text
    with httpx.Client(base_url=url, timeout=60) as browser:
        form = browser.get("/login")
        csrf = form.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        answer = browser.post("/login", data={"username": username, "password": "pw\x00", "csrf_token": csrf})
        assert answer.status_code == HTTPStatus.UNAUTHORIZED
    assert not guarded_log_watch.problems(), guarded_log_watch.problems()
