"""Shared links (pacs.auth.links): signed, scoped to one study, expiring, revocable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session
from starlette.datastructures import QueryParams

from pacs.auth import links
from pacs.db import Database, utcnow
from pacs.settings import Settings

STUDY = "1.2.826.0.1.3680043.8.498.1"
OTHER = "1.2.826.0.1.3680043.8.498.2"


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_a_link_names_its_study_purpose_and_expiry(settings: Settings) -> None:
    url = links.issue_link(settings, STUDY, links.FILM, timedelta(days=30))
    assert url.startswith(f"http://localhost:{settings.http_port}/s/")
    grant = links.read_token(links.secret_key(settings), token_of(url))
    assert grant is not None
    assert (grant.study_instance_uid, grant.purpose) == (STUDY, links.FILM)
    assert timedelta(days=29, hours=23) < grant.expires - utcnow() <= timedelta(days=30)
    consult = links.issue_link(settings.model_copy(update={"public_url": "https://pacs.example.cn/"}), STUDY,
                               links.CONSULTATION, timedelta(hours=2))
    assert consult.startswith("https://pacs.example.cn/c/")


def test_a_forged_altered_or_expired_token_is_refused(settings: Settings) -> None:
    key = links.secret_key(settings)
    token = token_of(links.issue_link(settings, STUDY, links.CONSULTATION, timedelta(hours=1)))
    assert links.read_token(key, token) is not None
    assert links.read_token(b"another key" * 3, token) is None
    assert links.read_token(key, token[:-2] + ("AA" if token[-2:] != "AA" else "BB")) is None
    assert links.read_token(key, "not-a-token") is None
    grant = links.read_token(key, token)
    assert grant is not None
    assert links.read_token(key, token, now=grant.expires) is None
    widened = links.make_token(b"another key" * 3, links.Grant(grant.link_id, OTHER, grant.purpose, grant.expires))
    assert links.read_token(key, widened) is None


@pytest.mark.parametrize(("purpose", "ttl", "study"), [
    ("print", timedelta(hours=1), STUDY),
    (links.FILM, timedelta(seconds=10), STUDY),
    (links.FILM, timedelta(days=400), STUDY),
    (links.FILM, timedelta(days=1), "1.2.3.abc"),
])
def test_a_link_out_of_bounds_is_not_made(settings: Settings, purpose: str, ttl: timedelta, study: str) -> None:
    with pytest.raises(links.LinkError):
        links.issue_link(settings, study, purpose, ttl)


def test_a_kept_link_is_revoked(settings: Settings) -> None:
    db = Database(settings.effective_database_url)
    with Session(db.engine) as session:
        url = links.issue_link(settings, STUDY, links.CONSULTATION, timedelta(hours=1), session=session,
                               created_by="dr.li")
        session.commit()
    checker = links.Checker(links.secret_key(settings), db)
    grant = checker.grant(token_of(url))
    assert grant is not None and grant.user == f"link:{grant.link_id}"
    with Session(db.engine) as session:
        row = session.get(links.SharedLink, grant.link_id)
        assert row is not None and row.created_by == "dr.li" and row.revoked_at is None
        links.revoke(session, grant.link_id, by="dr.li")
        session.commit()
    assert checker.grant(token_of(url)) is not None  # trusted from memory for CACHE_SECONDS ...
    checker.forget(grant.link_id)
    assert checker.grant(token_of(url)) is None  # ... then the database says it is revoked
    with pytest.raises(LookupError):
        links.Checker(checker.key, db).grant(token_of(url), memory_only=True)


def test_a_link_reads_its_study_and_nothing_else() -> None:
    grant = links.Grant("x", STUDY, links.CONSULTATION, utcnow() + timedelta(hours=1))
    film = links.Grant("y", STUDY, links.FILM, utcnow() + timedelta(hours=1))
    none = QueryParams("")

    def q(text: str) -> QueryParams:
        return QueryParams(text)

    assert links.allows(grant, "GET", f"/dicomweb/studies/{STUDY}/series", none)
    assert links.allows(grant, "GET", f"/dicomweb/studies/{STUDY}/series/1.2/instances/1.3/frames/1", none)
    assert links.allows(grant, "GET", "/dicomweb/studies", q(f"StudyInstanceUID={STUDY}&includefield=all"))
    assert links.allows(grant, "GET", "/viewer/viewer", q(f"StudyInstanceUIDs={STUDY}"))
    assert not links.allows(film, "GET", "/viewer/viewer", q(f"StudyInstanceUIDs={STUDY}"))
    assert links.allows(film, "GET", f"/dicomweb/studies/{STUDY}/series/1.2/instances/1.3/rendered", none)
    refused = [
        ("GET", f"/dicomweb/studies/{OTHER}/series", none),
        ("GET", f"/dicomweb/studies/{STUDY}1/series", none),
        ("GET", "/dicomweb/studies", none),
        ("GET", "/dicomweb/studies", q("PatientName=*")),
        ("GET", "/dicomweb/studies", q(f"StudyInstanceUID={STUDY}&StudyInstanceUID={OTHER}")),
        ("GET", "/dicomweb/studies", q(f"StudyInstanceUID={STUDY},{OTHER}")),
        ("POST", "/dicomweb/studies", none),
        ("POST", f"/dicomweb/studies/{STUDY}", none),
        ("GET", "/viewer", none),
        ("GET", "/desk", none),
        ("GET", "/api/orders", none),
        ("GET", "/fhir/ImagingStudy", none),
    ]
    for method, path, query in refused:
        assert not links.allows(grant, method, path, query), (method, path, str(query))
