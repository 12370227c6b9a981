"""Configuration: the only module that reads the environment and configuration files.

Precedence, highest first: command-line flags (passed as keyword overrides), environment
variables (``PACS_*``, nested sections with ``__``, e.g. ``PACS_MLLP__MAX_MESSAGE_BYTES``), the
TOML file named by ``--config`` or ``PACS_CONFIG``, then the defaults below.

Example TOML file::

    data_dir = "/var/lib/pacs"

    [mllp]
    max_message_bytes = 4_194_304
    default_charset = "GB 18030"

    [[peers]]
    ae_title = "CT1"
    host = "10.1.2.3"
    port = 104
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from datetime import datetime, tzinfo
from importlib.resources import files
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The mappings shipped with the package (package data, so a wheel or a plain ``pip install``
# finds them from any folder); a site edits a copy (``pacs mappings export DIR``) and names it
# with ``PACS_MAPPINGS_DIR`` or ``mappings_dir``.
SHIPPED_MAPPINGS = Path(str(files("pacs") / "mappings"))


class TLSServer(BaseModel):
    """A port served over TLS (:mod:`pacs.tls`: TLS 1.2 or 1.3 with the cipher suites of BCP 195,
    RFC 9325): on once ``tls_cert`` names this server's certificate."""

    tls_cert: Path | None = None
    """This server's certificate (PEM), followed by the intermediate CA certificates that lead to
    the hospital's CA; the private key may follow in the same file."""
    tls_key: Path | None = None
    """Its private key (PEM, unencrypted; readable by the service's user alone), unless in ``tls_cert``."""
    tls_client_ca: Path | None = None
    """Require a client certificate issued by one of these CA certificates (PEM): a client
    without one, or with another, is refused during the TLS handshake."""

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class TLSClient(BaseModel):
    """How this system opens a TLS connection to another (:func:`pacs.tls.client_context`)."""

    tls_ca: Path | None = None
    """The CA certificates (PEM) the other side's certificate is checked against (default: the
    system's trusted CAs)."""
    tls_cert: Path | None = None
    """A client certificate (PEM) to present, for a server that asks for one."""
    tls_key: Path | None = None
    """Its private key (PEM), unless in ``tls_cert``."""
    tls_check_hostname: bool = True
    """Check that the other side's certificate names the host it is reached at (RFC 9525); off
    only for a certificate that names neither the host nor its address."""


DicomService = Literal["store", "query", "worklist", "retrieve", "mpps", "commitment"]
DICOM_SERVICES: tuple[DicomService, ...] = ("store", "query", "worklist", "retrieve", "mpps", "commitment")
"""What a DICOM peer may be allowed to do: C-STORE; C-FIND of the archive (Q/R); C-FIND of the
worklist; C-MOVE and C-GET; MPPS N-CREATE and N-SET; storage commitment N-ACTION. C-ECHO is
always answered."""


class MLLPSettings(TLSServer):
    """HL7 v2 over MLLP (HL7 v2.5.1 Appendix C, "Minimal Lower Layer Protocol"); with ``tls_cert``,
    MLLP over TLS on ``tls_port`` as well."""

    max_message_bytes: int = 8 * 1024 * 1024
    idle_timeout_seconds: float = 600.0
    """A connection that sends no whole message for this long (counted from its opening or its
    last message; bytes outside a frame do not count) is closed."""
    frame_timeout_seconds: float = 60.0
    """A message must arrive whole within this from its start block; a frame still incomplete
    then (a sender trickling bytes) is dropped unacknowledged and the connection closed."""
    max_connections_per_address: int = Field(default=64, ge=1)
    """Connections one address may hold open at once; another one is closed as it opens, so that
    one sender's connections never use up what every sender shares."""
    default_charset: str = "UNICODE UTF-8"
    """Charset (HL7 table 0211 name) for messages whose MSH-18 is empty."""
    front_process: bool = True
    """Serve the MLLP connections from a process of their own, which also parses and maps each
    message, while the main process's intake worker stores and applies them
    (pacs.integration.front): HL7 traffic then uses two cores. Off: all in the main process."""
    tls_port: int = Field(default=2576, ge=0, le=65535)
    """MLLP over TLS (with ``tls_cert``): the same framing, limits and timeouts as the plain port;
    the TLS handshake must end within ``frame_timeout_seconds``."""


class HL7Settings(BaseModel):
    """How the engine identifies itself and how strictly it reads HL7 v2."""

    application: str = "PACS"
    facility: str = "RADIOLOGY"
    strict: bool = False
    """Validate every inbound message against the HL7 structure (hl7apy) and reject deviations."""
    batch_max: int = 256
    """Most messages taken into one database transaction by the intake worker."""


class HTTPSettings(TLSServer):
    """The HTTP server: HTTPS on ``tls_port`` once ``tls_cert`` is set, and the guard against
    clients that hold connections without using them."""

    request_head_timeout_seconds: float = 30.0
    """A request's line and headers must arrive whole within this from the connection's opening
    or the previous response; a connection that sends none, or trickles them, is closed."""
    max_connections_per_address: int = Field(default=256, ge=0)
    """Connections one address may hold open at once; more are answered 503 and closed
    (0: no limit, for a server behind a reverse proxy that is every client's one address)."""
    tls_port: int = Field(default=8443, ge=0, le=65535)
    """HTTPS (with ``tls_cert``)."""
    plain: bool = True
    """Also serve plain HTTP on ``http_port``; false serves HTTPS alone (``tls_cert`` required)."""

    @field_validator("plain")
    @classmethod
    def _something_served(cls, plain: bool, info: Any) -> bool:
        if not plain and info.data.get("tls_cert") is None:
            raise ValueError("[http] plain = false serves HTTPS alone: name the certificate in [http] tls_cert")
        return plain


class Peer(TLSClient):
    """A known DICOM application entity."""

    ae_title: str
    host: str
    port: int
    charset: str | None = None
    """Fix the character set this peer gets in query answers (e.g. "ISO_IR 192")."""
    tls: bool = False
    """Open associations to this peer over TLS (PS3.15 Annex B): C-MOVE sub-operations,
    storage commitment reports, IAN, ``pacs doctor``'s C-ECHO. ``tls_cert`` defaults to
    ``[dicom] tls_cert`` (this AE's own certificate), ``tls_ca`` to ``[dicom] tls_client_ca``."""
    services: list[DicomService] | None = None
    """What this peer may ask of this AE (default: everything); a request for anything else is
    refused with 0124H, Refused: Not Authorized (PS3.7 C.5.21), and audited."""
    retrieve_to: list[str] | None = None
    """The AE titles (under [[peers]]) this peer may C-MOVE to (default: any of them)."""


class Printer(TLSClient):
    """A DICOM film printer (``[[printers]]``): a Basic Grayscale Print Management SCP (PS3.4
    Annex H) the viewer's film page prints to (:mod:`pacs.film.print_management`)."""

    ae_title: str
    host: str
    port: int
    tls: bool = False
    """Open associations to it over TLS (PS3.15 Annex B), as for ``[[peers]]``."""
    name: str = ""
    """What the film page calls it (e.g. "1F CT film"); its AE title when empty."""
    film_size: str = "14INX17IN"
    """Film Size ID (2010,0050): 8INX10IN, 10INX12IN, 11INX14IN, 14INX14IN, 14INX17IN, 24CMX30CM ..."""
    medium: str = "BLUE FILM"
    """Medium Type (2000,0030): PAPER, CLEAR FILM, BLUE FILM, MAMMO CLEAR FILM, MAMMO BLUE FILM."""
    destination: str = "PROCESSOR"
    """Film Destination (2000,0040): MAGAZINE, PROCESSOR, BIN_i."""
    orientation: Literal["PORTRAIT", "LANDSCAPE"] = "PORTRAIT"
    """Film Orientation (2010,0040)."""
    bits: Literal[8, 12] = 12
    """Bits Stored of the images sent (2028,0101): 12 where the printer supports it, else 8."""
    magnification: str = ""
    """Magnification Type (2010,0060): REPLICATE, BILINEAR, CUBIC, NONE; the printer's own when empty."""

    @property
    def label(self) -> str:
        return self.name or self.ae_title


class DicomSettings(TLSServer):
    """The DICOM application entity (PS3.7, PS3.8); with ``tls_cert``, DICOM over TLS (PS3.15
    Annex B) on ``tls_port`` as well, served by the main process."""

    accept_unknown_peers: bool = True
    """Accept associations from calling AE titles not listed under [[peers]]."""
    require_called_ae_title: bool = False
    """Reject associations addressed to another AE title than ours."""
    max_associations: int = 32
    """Associations served at once, per process."""
    processes: int = Field(default=1, ge=1, le=64)
    """Processes serving DICOM associations (the main process hands new connections to the least
    busy; see pacs.archive.receivers): more than one lets associations arriving together use more
    than one core, at the price of each object's trip to the main process's index writer. One by
    default: on two cores it received faster with one association and with four than three
    processes did (bench/README.md, ingest.py)."""
    network_timeout_seconds: float = 60.0
    """An association silent this long is aborted; so is one whose peer stops this long in the
    middle of a PDU, or stops reading what is sent to it."""
    dimse_timeout_seconds: float = 30.0
    acse_timeout_seconds: float = 30.0
    """The ARTIM timer (PS3.8 9.1.5): a connection that has not sent its whole A-ASSOCIATE-RQ
    this long after it opened is closed, without ever counting as an association; after an
    A-ASSOCIATE-RJ or A-ABORT, how long the peer has to close. Also how long an association this
    AE requests waits for its answer."""
    pending_per_address: int = Field(default=16, ge=1)
    """Connections from one address that may wait for their A-ASSOCIATE-RQ at once (PS3.8 9.2,
    state Sta2); one more closes the oldest of them that have waited a second or more, so that a
    flood from one address never keeps another address's modalities out."""
    tls_port: int = Field(default=2762, ge=0, le=65535)
    """DICOM over TLS (with ``tls_cert``): the same AE on the port IANA names dicom-tls."""
    unknown_peer_services: list[DicomService] = Field(default_factory=lambda: list(DICOM_SERVICES))
    """What a calling AE title not under [[peers]] may ask (with ``accept_unknown_peers``)."""


class ArchiveSettings(BaseModel):
    """Where images are kept and what happens to the same instance twice."""

    storage_dir: Path | None = None
    """The online storage area (default: DATA_DIR/storage)."""
    duplicates: Literal["ignore", "keep_newer", "reject"] = "ignore"
    acknowledge: Literal["durable", "indexed"] = "durable"
    """When a C-STORE is answered Success: once the object is on disk (``durable``; it is indexed
    a moment later, and at the next start if the process ends first), or once it is also indexed
    (``indexed``: slower, and what a sender sees is then queryable at once from any association)."""
    accept_unknown_storage_classes: bool = True
    """Store objects of SOP classes this AE does not list (private or newer ones)."""
    min_free_bytes: int = 1024 * 1024 * 1024
    """Refuse new objects (0xA700, out of resources) when the storage area has less free space."""
    metadata_warm_seconds: float = 30.0
    """Every so many seconds, build the kept WADO-RS metadata of the studies that became stable
    (``[publish] stable_after_seconds``) since the last pass, so that a viewer's first look at a
    new study is as quick as the next; 0 builds it on the first request only."""


class StorageAreaSettings(BaseModel):
    """One storage area: where copies of objects are kept (``[[storage.areas]]``)."""

    name: str
    kind: Literal["filesystem", "s3", "container"] = "filesystem"
    """filesystem: a folder; s3: an S3-compatible bucket (MinIO, Ceph, a cloud); container: one
    tar file per study on a slow volume (tape-like)."""
    tier: Literal["online", "nearline", "offline"] = "online"
    path: Path | None = None
    """The folder of a filesystem or container area."""
    bucket: str | None = None
    endpoint_url: str | None = None
    prefix: str = ""
    access_key: str | None = None
    secret_key: str | None = None
    region: str | None = None
    tls_ca: Path | None = None
    """The CA certificates (PEM) an https ``endpoint_url``'s certificate is checked against
    (default: the system's); the certificate is always checked."""


class StorageRule(BaseModel):
    """A migration rule (``[[storage.rules]]``): studies in ``from`` matching every condition
    given move to ``to``."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = ""
    from_: str = Field(alias="from")
    to: str
    older_than_days: float | None = None
    """Study date at least this many days ago."""
    not_accessed_days: float | None = None
    """Not retrieved (C-MOVE, C-GET, WADO, viewer) for this many days (else since it arrived)."""
    modality: list[str] | None = None
    """Only studies holding one of these modalities."""
    min_study_bytes: int | None = None
    when_free_below_bytes: int | None = None
    """Only while the ``from`` area has less free space than this; oldest-accessed first, until
    it has this much again."""
    compress: Literal["none", "jpeg-ls", "jpeg2000"] = "none"
    """Lossless compression on the way (pixel data checked bit-exact after decoding)."""

    @property
    def label(self) -> str:
        return self.name or f"{self.from_}->{self.to}"


class StorageSettings(BaseModel):
    """Storage areas, tiers, migration rules, replication, recall cache and scrubbing."""

    areas: list[StorageAreaSettings] = Field(default_factory=list)
    """Without an area named "online", a filesystem area "online" at [archive] storage_dir is added."""
    write: list[str] = Field(default_factory=lambda: ["online"])
    """Areas every new object is written to: the first before the ACK, the others by the
    background replicator."""
    cache: str = "online"
    """The online area recalled studies land in."""
    cache_max_bytes: int | None = None
    """Evict recalled copies, least recently used study first, above this many bytes."""
    cache_min_free_bytes: int | None = None
    """... or while the cache area has less free space than this."""
    rules: list[StorageRule] = Field(default_factory=list)
    rules_interval_seconds: float = 3600.0
    """How often the scheduler applies the rules (0: only ``pacs storage migrate``)."""
    scrub_interval_seconds: float = 604800.0
    """How often every copy is verified and repaired, weekly by default (0: only ``pacs storage scrub``)."""
    replicate_interval_seconds: float = 5.0
    """How often pending replicas are retried when nothing new arrives."""
    prefetch: bool = True
    """Recall a patient's prior studies (same modality or body part) when an order arrives."""
    prefetch_max_studies: int = 5
    prefetch_poll_seconds: float = 2.0
    recall_workers: int = 16
    """Parallel reads when recalling a study from an object store or a folder."""


class PublishSettings(TLSClient):
    """Where stable studies are announced: the platform (FHIR), DICOM peers (IAN). The platform
    is called with a bearer token (``fhir_token``, or one from its OAuth 2.0 token endpoint by
    the client credentials grant, RFC 6749 4.4) and, over https, the ``tls_*`` settings."""

    fhir_base_url: str | None = None
    fhir_token: SecretStr | None = None
    """A fixed bearer token for the platform (RFC 6750)."""
    oauth_token_url: str | None = None
    """The platform's OAuth 2.0 token endpoint: a token is asked for with ``oauth_client_id`` and
    ``oauth_client_secret`` and used until shortly before it expires."""
    oauth_client_id: str = ""
    oauth_client_secret: SecretStr | None = None
    oauth_scope: str | None = None
    """The scope asked for, e.g. "system/ImagingStudy.write" (SMART Backend Services)."""

    @field_validator("oauth_client_secret")
    @classmethod
    def _client_named(cls, secret: SecretStr | None, info: Any) -> SecretStr | None:
        if secret is not None and not str(info.data.get("oauth_client_id") or "").strip():
            raise ValueError("[publish] oauth_client_secret is set: name the client in oauth_client_id too")
        return secret
    stable_after_seconds: float = 60.0
    ian_peers: list[str] = Field(default_factory=list)
    """AE titles (under [[peers]]) sent an Instance Availability Notification (IHE RAD-49)."""


class OutboxSettings(BaseModel):
    """Retries of outbound deliveries: exponential backoff from base to max."""

    base_delay_seconds: float = 2.0
    max_delay_seconds: float = 300.0


class LogSettings(BaseModel):
    """The log (``[log]``, :mod:`pacs.logs`): how much it says, and in what shape."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    """The system's own loggers (default: ``log_level``, INFO). The libraries' (pynetdicom,
    uvicorn, Alembic ...) say warnings and errors only, unless this is DEBUG."""
    format: Literal["text", "json"] = "text"
    """text: a line per record for a person; json: one JSON object per line (time, level, logger,
    message, process, exception) for a log collector."""


class MetricsSettings(BaseModel):
    """Prometheus metrics (``[metrics]``, :mod:`pacs.metrics`)."""

    port: int = Field(default=0, ge=0, le=65535)
    """Serve ``/metrics`` on this port of 127.0.0.1 alone, for a Prometheus on the same machine or
    an agent that forwards (0: no such port)."""
    http: bool = False
    """Also serve ``/metrics`` on the main HTTP port, to a scraper elsewhere: the access control
    of the HTTP routes applies to it (see :func:`pacs.metrics.router`)."""


class HISDestination(TLSClient):
    """Where status messages for the HIS go (IHE RAD-3/RAD-13), if anywhere."""

    host: str | None = None
    port: int | None = None
    tls: bool = False
    """MLLP over TLS to the HIS (``tls_ca``, ``tls_cert``, ``tls_key`` as it asks)."""
    version: str = "2.4"
    application: str = "HIS"
    facility: str = "HOSPITAL"
    notify_images_available: bool = False
    """Also tell the HIS when an order's first images arrive (ORC-5 = A, some results available)."""
    charset: Literal["UNICODE UTF-8", "GB 18030-2000"] = "UNICODE UTF-8"
    """The character set of what is sent to the HIS (MSH-18, HL7 table 0211): UTF-8 or GB 18030."""
    pdq: str | None = None
    """The HIS's Patient Demographics Supplier, ``"mllp://host:port"``: the desk's patient search
    asks it when the registry finds no one (IHE PDQ, ITI-21: QBP^Q22 → RSP^K22, HL7 v2.5)."""
    fhir_base_url: str | None = None
    """... or, where ``pdq`` is unset, the HIS's FHIR server, searched for Patient (IHE PDQm,
    ITI-78), e.g. ``"https://his.hospital.cn/fhir"``."""
    query_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    """How long a search waits for the HIS's answer before it shows what the registry has."""
    pdq_name: Literal["split", "whole"] = "split"
    """How a Han name is asked for: family and given name apart (@PID.5.1.1 and @PID.5.2, as
    IHE's examples do), or whole in @PID.5.1.1 (a HIS that keeps 张三 in PID-5.1)."""

    @field_validator("pdq")
    @classmethod
    def _pdq_url(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"mllp://[^\s:/]+:\d+/?", value.strip()):
            raise ValueError(f"[his] pdq = {value!r}: write mllp://host:port")
        return value.strip().rstrip("/") if value else None


class WalkInSettings(BaseModel):
    """Patients the registration desk registers itself, when the HIS cannot be asked
    (``[walk_in]``): each gets a temporary ID until the HIS merges it into its own (ADT A40)."""

    prefix: str = Field(default="TMP", pattern=r"^[A-Za-z0-9]{0,16}$")
    """Temporary IDs are this, the day and a number of that day: TMP202612070001."""
    authority: str = ""
    """The assigning authority (CX.4) the temporary ID is kept with; the HIS's A40 must name the
    same one in MRG-1 for the merge to find the patient (empty: none)."""


class AuditSettings(BaseModel):
    """The audit log (IHE ATNA, DICOM PS3.15 A.5): retention and forwarding to a syslog collector."""

    retention_days: float = 0
    """Entries older than this are purged daily (0: keep every entry)."""
    syslog: str | None = None
    """Forward every entry to an audit record repository, RFC 5424 over UDP or TCP:
    "udp://host:514" or "tcp://host:514"."""

    @field_validator("syslog")
    @classmethod
    def _syslog_url(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"(udp|tcp)://[^\s:/]+(:\d+)?/?", value.strip()):
            raise ValueError(f"[audit] syslog = {value!r}: write udp://host:514 or tcp://host:514")
        return value.strip() if value else None
    syslog_poll_seconds: float = 1.0
    source_id: str | None = None
    """AuditSourceID of the messages (default: the AE title)."""
    enterprise_site_id: str = ""
    coalesce_seconds: float = 60.0
    """Repeated reads of one study by one client over HTTP within this are one entry."""


class BackupSettings(BaseModel):
    """Scheduled backups: ``pacs backup DEST`` run by the server."""

    dest: Path | None = None
    interval_hours: float = 0
    """How often the server backs up to ``dest`` (0: only ``pacs backup``)."""
    keep: int = 7
    """Database snapshots kept in ``dest`` (images are shared between them)."""


class RetentionSettings(BaseModel):
    """Retention and deletion: rejected instances wait in the trash before they are removed."""

    trash_days: float = 30
    """Days a rejected or expired instance stays in the trash before it is removed."""
    per_modality: dict[str, float] = Field(default_factory=dict)
    """Days since the study date after which a study of a modality expires, e.g.
    ``{ MG = 7300, CT = 3650 }``; a study with several listed modalities keeps the longest."""
    interval_hours: float = 24
    """How often the server applies the periods and empties the trash (0: only ``pacs retention run``)."""


class OIDCSettings(BaseModel):
    """Single sign-on through the hospital's OpenID Connect provider (``[auth.oidc]``,
    :mod:`pacs.auth.oidc`): its JWTs as bearer tokens, and the browser login by the authorization
    code flow with PKCE. Off while ``issuer`` is unset."""

    issuer: str | None = None
    """The provider's issuer identifier, e.g. https://sso.hospital.cn/realms/hospital (Keycloak)
    or https://adfs.hospital.cn/adfs (AD FS); its metadata is read from
    ``{issuer}/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0, 4)."""
    client_id: str = ""
    """This server's client at the provider (required with ``issuer``)."""
    client_secret: SecretStr | None = None
    """The client's secret (HTTP Basic at the token endpoint, RFC 6749 2.3.1); none for a public
    client, which PKCE alone protects (RFC 7636)."""
    audience: str | None = None
    """The ``aud`` a bearer JWT must name to be accepted here (default: ``client_id``)."""
    roles_claim: str = "realm_access.roles"
    """Where a token carries the user's roles or groups, a dotted path into its claims:
    Keycloak's realm roles by default; "resource_access.CLIENT.roles" for a client's roles,
    "roles" or "groups" for AD FS and Entra ID."""
    roles_map: dict[str, str | list[str]] = Field(default_factory=dict)
    """The provider's role or group names → this system's roles, e.g.
    ``{ "PACS-Radiologists" = "radiologist" }``. Empty: the provider's names are this system's
    (names of no role here are ignored); once given, only the names it lists count."""
    username_claim: str = "preferred_username"
    """The claim naming the user ("upn" for AD FS; "sub" is the fallback)."""
    scopes: str = "openid profile"
    """The scopes the browser login asks for (space-separated; "openid" is always sent)."""
    leeway_seconds: float = Field(default=30.0, ge=0)
    """Clock skew allowed when checking exp, nbf and iat (RFC 7519 4.1.4)."""
    jwks_cache_seconds: float = Field(default=3600.0, gt=0)
    """How long the provider's metadata and keys are used before they are read again."""
    jwks_refetch_seconds: float = Field(default=60.0, ge=0)
    """A token signed by a key not in the kept set (the provider rotated its keys) makes the keys
    be read again, at most this often."""
    timeout_seconds: float = Field(default=10.0, gt=0)
    """How long a request to the provider may take."""
    ca_file: Path | None = None
    """The CA certificates (PEM) the provider's HTTPS certificate is checked against, for a
    hospital's own CA (default: the system's)."""

    @model_validator(mode="after")
    def _client_named(self) -> OIDCSettings:
        if self.issuer and not self.client_id.strip():
            raise ValueError("[auth.oidc] issuer is set: name this server's client_id at the identity provider too")
        return self

    @property
    def expected_audience(self) -> str:
        return self.audience or self.client_id


class AuthSettings(BaseModel):
    """Logins, sessions and roles (pacs.auth)."""

    session_idle_minutes: float = Field(default=30.0, gt=0)
    """A browser session ends after this long without a request."""
    session_max_hours: float = Field(default=12.0, gt=0)
    """... and this long after the login in any case (a shift)."""
    lockout_failures: int = Field(default=5, ge=1)
    """Wrong passwords in a row that lock an account ..."""
    lockout_minutes: float = Field(default=15.0, gt=0)
    """... for this long (the right password is refused meanwhile)."""
    login_attempts_per_minute: int = Field(default=20, ge=1)
    """Logins tried from one address in any minute before the next is answered 429."""
    basic: bool = True
    """Accept HTTP Basic credentials (a user's name and password) from scripts."""
    secure_cookies: Literal["auto", "always"] = "auto"
    """Mark the session cookie Secure: when the request came over HTTPS (auto), or always (behind
    a proxy that ends TLS)."""
    secret_key_file: Path | None = None
    """The key that signs session cookies (default DATA_DIR/session.key, made at the first
    start); give every node of a cluster the same file."""
    default_language: Literal["zh-CN", "en"] = "zh-CN"
    """The pages' language for users who chose none."""
    roles: dict[str, list[str]] = Field(default_factory=dict)
    """A role's permissions in place of the shipped ones (pacs.auth.roles), or a new role."""
    oidc: OIDCSettings = Field(default_factory=OIDCSettings)
    """Single sign-on (``[auth.oidc]``): off unless its issuer is set."""


class ReportSettings(BaseModel):
    """What a signed report's PDF carries (``[report]``, :mod:`pacs.reporting.pdf`)."""

    hospital: str = ""
    """The hospital's name, at the head of every report (e.g. 市第一人民医院)."""
    department: str = "放射科"
    """The department under it."""
    logo: Path | None = None
    """A PNG or JPEG printed left of the name."""
    film_link_days: int = Field(default=30, ge=1, le=366)
    """How long the cloud-film link printed as a QR code on a final report stays valid."""


class DeskSettings(BaseModel):
    """The registration desk's printouts (``[desk]``, :mod:`pacs.registry.labels`): the page
    sizes of the label printer's labels and of the patient's slip, in millimetres."""

    label_mm: tuple[float, float] = (60.0, 40.0)
    """The patient label (width, height): a thermal label printer's roll, e.g. 60 × 40 mm."""
    slip_mm: tuple[float, float] = (80.0, 120.0)
    """The patient's slip: 80 mm receipt paper (80 × 120), or A5 (148 × 210)."""

    @field_validator("label_mm", "slip_mm")
    @classmethod
    def _size(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(30 <= side <= 420 for side in value):
            raise ValueError(f"{value}: a page's width and height are from 30 to 420 mm")
        return value


class AssetSettings(BaseModel):
    """Third-party files fetched at install time (``[assets]``, :mod:`pacs.assets`)."""

    dir: Path | None = None
    """Where ``pacs assets install`` puts them and the server finds them (default DATA_DIR/assets);
    a shared folder (e.g. /var/cache/pacs/assets) serves several installations."""


class Settings(BaseSettings):
    """Everything the system can be told. See the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="PACS_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    data_dir: Path = Path("./pacs-data")
    database_url: str | None = None
    mappings_dir: Path = SHIPPED_MAPPINGS
    config: Path | None = None

    host: str = "0.0.0.0"
    dicom_port: int = 11112
    mllp_port: int = 2575
    http_port: int = 8080
    ae_title: str = "PACS"

    uid_root: str | None = None
    """Root for UIDs this system assigns (e.g. study instance UIDs at scheduling); pydicom's if unset."""
    timezone: str | None = None
    """The hospital's time zone (IANA name, e.g. Asia/Shanghai) for clinical times given with an
    offset (FHIR); HL7 v2 and DICOM times are local already. Default: the system's zone."""
    public_url: str | None = None
    """How other systems reach this server's HTTP side (e.g. https://pacs.hospital.cn); used in
    the DICOMweb endpoint and the URLs published to the platform."""
    accession_prefix: str = "A"
    """Prefix of the accession numbers assigned to orders that arrive without one."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """The same as ``[log] level``, which wins when both are given."""
    log: LogSettings = Field(default_factory=LogSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    mappings_poll_seconds: float = 2.0

    mllp: MLLPSettings = Field(default_factory=MLLPSettings)
    http: HTTPSettings = Field(default_factory=HTTPSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    hl7: HL7Settings = Field(default_factory=HL7Settings)
    peers: list[Peer] = Field(default_factory=list)
    printers: list[Printer] = Field(default_factory=list)
    """DICOM film printers (``[[printers]]``), the first one the film page's default."""
    publish: PublishSettings = Field(default_factory=PublishSettings)
    his: HISDestination = Field(default_factory=HISDestination)
    walk_in: WalkInSettings = Field(default_factory=WalkInSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    backup: BackupSettings = Field(default_factory=BackupSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    desk: DeskSettings = Field(default_factory=DeskSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    assets: AssetSettings = Field(default_factory=AssetSettings)
    admin_password: SecretStr | None = None
    """PACS_ADMIN_PASSWORD: the password of the first administrator ("admin"), made at a start
    that finds no user."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _config_file(init_settings)
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def effective_database_url(self) -> str:
        """The database to use: ``database_url`` or a SQLite file in the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pacs.db').resolve()}"

    @property
    def zone(self) -> tzinfo | None:
        """The hospital's time zone, or None for the system's local zone."""
        return ZoneInfo(self.timezone) if self.timezone else None

    @property
    def session_key_file(self) -> Path:
        return self.auth.secret_key_file or self.data_dir / "session.key"

    @property
    def effective_log_level(self) -> str:
        return self.log.level or self.log_level

    @property
    def storage_dir(self) -> Path:
        return self.archive.storage_dir or self.data_dir / "storage"

    @property
    def assets_dir(self) -> Path:
        return self.assets.dir or self.data_dir / "assets"

    def peer(self, ae_title: str) -> Peer | None:
        for peer in self.peers:
            if peer.ae_title == ae_title.strip():
                return peer
        return None

    def printer(self, name: str) -> Printer | None:
        """The film printer called ``name`` (its name or its AE title); the first where ``name`` is empty."""
        for printer in self.printers:
            if name.strip() in (printer.name, printer.ae_title) or not name.strip():
                return printer
        return None


def _config_file(init_settings: PydanticBaseSettingsSource) -> Path | None:
    given = init_settings().get("config") if callable(init_settings) else None
    path = given or os.environ.get("PACS_CONFIG")
    if not path:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"configuration file {path} does not exist (from --config/PACS_CONFIG)")
    return path


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, with ``overrides`` (command-line flags) taking precedence.

    Overrides whose value is ``None`` are ignored, so unset flags fall through to the
    environment, the config file and the defaults.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**given)


def local_moment(moment: datetime, zone: tzinfo | None) -> datetime:
    """A wall-clock time of the hospital (HL7 v2 and DICOM times carry no offset) as an aware
    datetime in ``zone`` (:attr:`Settings.zone`; None: the system's zone)."""
    if moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=zone) if zone else moment.astimezone()


class ServiceManager(BaseModel):
    """What systemd tells the service it starts, in the environment (sd_notify(3),
    sd_watchdog_enabled(3)); not part of the configuration."""

    notify_socket: str | None = None
    """NOTIFY_SOCKET: the datagram socket for READY=1, WATCHDOG=1, STOPPING=1 (a path, or
    ``@name`` in the abstract namespace)."""
    watchdog_usec: int | None = None
    """WATCHDOG_USEC: the watchdog's period, when this process is the one watched (WATCHDOG_PID
    is unset or names it)."""


def service_manager() -> ServiceManager:
    """The service manager's variables of this process (empty when not started by systemd)."""
    socket_path = os.environ.get("NOTIFY_SOCKET") or None
    watchdog = os.environ.get("WATCHDOG_USEC", "")
    watched = os.environ.get("WATCHDOG_PID", "")
    usec = int(watchdog) if watchdog.isdigit() and int(watchdog) > 0 else None
    if watched and (not watched.isdigit() or int(watched) != os.getpid()):
        usec = None
    return ServiceManager(notify_socket=socket_path, watchdog_usec=usec)
