"""Publishing studies to the hospital platform as FHIR ImagingStudy (the design's last step).

A study is published once it is stable: its MPPS completed, or no new instance for
``[publish] stable_after_seconds``. It is published again whenever what the ImagingStudy says
changes: new instances, an ADT update or merge of its patient, a cancelled order. Each version
is sent as a conditional update on the study-UID identifier (FHIR R4 http.html#cond-update)
through the outbox, so it is retried while the platform is down and survives restarts.

Every node of several on one PostgreSQL database runs a publisher: each pass claims the studies
it reads with ``SELECT … FOR UPDATE OF study SKIP LOCKED`` (PostgreSQL 15 SELECT, "The Locking
Clause"), so a study another node is publishing is skipped, and once that node commits the study
is no longer changed. The claim lasts the pass's transaction and dies with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import or_
from sqlmodel import Session, col, select

from pacs.archive.index import Study
from pacs.db import Database, utcnow
from pacs.fhir_server.imaging_study import imaging_study_resource
from pacs.integration.oauth import BearerToken, ClientCredentials
from pacs.integration.outbox import Delivered, DeliveryRefused, OutboxItem, enqueue
from pacs.registry.models import ImagingOrder, Patient, PerformedProcedureStep, PerformedStepStatus
from pacs.settings import PublishSettings, Settings
from pacs.tls import client_context

log = logging.getLogger(__name__)

DESTINATION = "platform"
RETRYABLE = {408, 425, 429}


def conditional_url(study_instance_uid: str) -> str:
    return f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study_instance_uid}"


class Publisher:
    def __init__(self, db: Database, settings: Settings, wake_outbox: Any = None, poll_seconds: float = 1.0) -> None:
        self.db = db
        self.settings = settings
        self.wake_outbox = wake_outbox
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                if self.run_once() and self.wake_outbox is not None:
                    self.wake_outbox()
            except Exception:
                log.exception("publication pass failed")

    def run_once(self, now: datetime | None = None) -> int:
        """Queue an ImagingStudy for every study that is stable and changed; returns how many."""
        now = now or utcnow()
        quiet_since = now - timedelta(seconds=self.settings.publish.stable_after_seconds)
        queued = 0
        with Session(self.db.engine, expire_on_commit=False) as session:
            changed = or_(col(Study.published_at).is_(None), Study.updated_at > Study.published_at,
                          Patient.updated_at > Study.published_at, ImagingOrder.updated_at > Study.published_at)
            query = (select(Study).join(Patient, Patient.id == Study.patient)
                     .outerjoin(ImagingOrder, ImagingOrder.id == Study.order)
                     .where(changed).order_by(col(Study.updated_at)).limit(500))
            if not self.db.is_sqlite:  # another node's studies are skipped, not waited for
                query = query.with_for_update(of=Study, skip_locked=True)  # type: ignore[arg-type]
            candidates = session.exec(query).all()
            for study in candidates:
                if study.updated_at > quiet_since and not self._performed(session, study):
                    continue  # instances may still be coming
                resource = imaging_study_resource(session, study, zone=self.settings.zone, logical=True,
                                                  dicomweb_url=self._dicomweb())
                content = {k: v for k, v in resource.items() if k not in ("id", "meta")}
                digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
                study.published_at = now
                if digest != study.publish_hash:
                    study.publish_hash = digest
                    if self.settings.publish.fhir_base_url:
                        enqueue(session, destination=DESTINATION, kind="fhir", order=study.order,
                                payload=json.dumps({"method": "PUT",
                                                    "url": conditional_url(study.study_instance_uid),
                                                    "resource": content}, ensure_ascii=False),
                                description=f"ImagingStudy {study.study_instance_uid} "
                                            f"({content['status']}, {study.number_of_instances} instances)")
                    if self.settings.publish.ian_peers:
                        from pacs.archive.ian import enqueue_notifications

                        enqueue_notifications(session, study, self.settings)
                    queued += 1
                session.add(study)
            session.commit()
        if queued:
            log.info("queued %d ImagingStudy update(s) for the platform", queued)
        return queued

    @staticmethod
    def _performed(session: Session, study: Study) -> bool:
        """Its order's modality said it is done (every MPPS completed)."""
        if study.order is None:
            return False
        statuses = session.exec(select(PerformedProcedureStep.status)
                                .where(PerformedProcedureStep.order == study.order)).all()
        return bool(statuses) and all(s == PerformedStepStatus.COMPLETED for s in statuses)

    def _dicomweb(self) -> str:
        http = self.settings.http
        fallback = (f"http://localhost:{self.settings.http_port}" if http.plain
                    else f"https://localhost:{http.tls_port}")
        base = self.settings.public_url or fallback
        return base.rstrip("/") + "/dicomweb"


def platform_auth(publish: PublishSettings) -> httpx.Auth | None:
    """How the platform is told who calls: a token from its OAuth 2.0 token endpoint (client
    credentials, RFC 6749 4.4), a fixed bearer token, or nothing."""
    if publish.oauth_token_url:
        secret = publish.oauth_client_secret.get_secret_value() if publish.oauth_client_secret else ""
        return ClientCredentials(publish.oauth_token_url, publish.oauth_client_id, secret, publish.oauth_scope)
    if publish.fhir_token is not None:
        return BearerToken(publish.fhir_token.get_secret_value())
    return None


def fhir_deliverer(publish: PublishSettings, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    """PUT the resource to the platform; 2xx delivered, 4xx refused (but 408/425/429), else retried.

    Authenticated as ``[publish]`` says (:func:`platform_auth`); over https, the platform's
    certificate is checked against ``tls_ca`` and ``tls_cert`` presented if the platform asks
    for one (:func:`pacs.tls.client_context`; a renewed file is used from the next item on)."""
    assert publish.fhir_base_url
    base_url = publish.fhir_base_url.rstrip("/") + "/"
    auth = platform_auth(publish)
    clients: dict[int, httpx.Client] = {}

    def client() -> httpx.Client:
        context = client_context("[publish]", publish)
        current = clients.get(id(context))
        if current is None:
            for old in clients.values():
                old.close()
            clients.clear()
            current = clients[id(context)] = httpx.Client(
                base_url=base_url, timeout=timeout, verify=context, auth=auth,
                headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
        return current

    def deliver(item: OutboxItem) -> Delivered:
        request = json.loads(item.payload)
        response = client().request(request["method"], request["url"], json=request["resource"])
        if 200 <= response.status_code < 300:
            return Delivered(response=f"{response.status_code} {response.headers.get('location', '')}".strip())
        if 400 <= response.status_code < 500 and response.status_code not in RETRYABLE:
            raise DeliveryRefused(f"the platform answered {response.status_code}", response.text[:2000])
        raise ConnectionError(f"the platform answered {response.status_code}")

    return deliver
