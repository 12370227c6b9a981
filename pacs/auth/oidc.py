"""Single sign-on through the hospital's OpenID Connect provider (Keycloak, AD FS, Entra ID).

Configured under ``[auth.oidc]`` (:class:`pacs.settings.OIDCSettings`); off while its issuer is
unset. Two ways in:

**Bearer JWTs** (RFC 6750 2.1). A bearer token that is not one of this server's (``pacs_…``)
goes to :meth:`OpenIDConnect.principal`, which accepts it only when

- it is a JWS (RFC 7515 7.1) signed with an asymmetric algorithm (RFC 7518 3.3–3.5: RS*, PS*,
  ES*) by a key of the provider's JWK Set (RFC 7517 5) that its ``kid`` names: never an
  unsigned token (``alg: none``), never an HMAC whose "secret" would be the provider's public key
  (RFC 8725 2.1, 3.1);
- its ``iss`` is the issuer, its ``aud`` names this server (``audience``, by default the client
  id), ``exp`` has not passed and ``nbf`` and ``iat`` are not ahead, give or take
  ``leeway_seconds`` (RFC 7519 4.1.1–4.1.6).

A refused token gets 401 with the reason (expired, another audience, an unknown key, a bad
signature ...). The roles come from the claim ``roles_claim`` through ``roles_map``
(:meth:`OpenIDConnect.roles_of`). An accepted token's principal is kept until the token expires,
so each further request with it costs a digest and a dictionary lookup.

**The browser login**, the authorization code flow with PKCE (OIDC Core 1.0 3.1, RFC 6749 4.1,
RFC 7636). ``GET /login/sso`` (:mod:`pacs.auth.pages`) sends the browser to the provider's
authorization endpoint with ``state``, ``nonce`` and an S256 code challenge
(:meth:`OpenIDConnect.begin`), keeping state, nonce, the code verifier and where to go afterwards
in a short-lived cookie signed with the session key; ``GET /login/callback`` checks the state
(RFC 6749 10.12), exchanges the code and the verifier at the token endpoint (RFC 6749 4.1.3,
RFC 7636 4.5) and validates the ID token, its nonce included (OIDC Core 1.0 3.1.3.7;
:meth:`OpenIDConnect.finish`). The user is then found or made (:meth:`pacs.auth.access.Gate.
single_sign_on`) and gets the session cookie a password login gets.

**The provider's metadata and keys** are read at their first need from
``{issuer}/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0, 4) and its
``jwks_uri``, and kept ``jwks_cache_seconds``; a token whose ``kid`` is not among the kept keys
(the provider rotated them) has them read again, at most every ``jwks_refetch_seconds``. While
the provider can't be reached, the metadata and keys kept go on being used.

authlib makes the OAuth 2.0 requests (the authorization URL with its PKCE challenge, the token
request with the client's authentication, the provider's error answers); joserfc, authlib's JOSE
library, checks the JWTs; httpx carries both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.client import OAuth2Client
from itsdangerous import BadSignature, URLSafeTimedSerializer
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import Key, KeySet
from starlette.exceptions import HTTPException

from pacs.auth.access import Principal, _Cache, unauthorized
from pacs.auth.roles import Permission

log = logging.getLogger(__name__)

# RFC 7518 3.3 (RSASSA-PKCS1-v1_5), 3.4 (ECDSA), 3.5 (RSASSA-PSS): the signatures only the
# provider's private key can make. "none" and HS* are refused (RFC 8725 3.1).
ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
DISCOVERY_PATH = "/.well-known/openid-configuration"  # OpenID Connect Discovery 1.0, 4
JWS_COMPACT_PARTS = 3  # header.payload.signature (RFC 7515 7.1); a JWE has five
SIGNING_USE = "sig"  # RFC 7517 4.2
FLOW_COOKIE = "pacs_sso"
FLOW_COOKIE_PATH = "/login"
FLOW_SALT = "pacs.sso"
FLOW_SECONDS = 600  # time to log in at the provider and come back
STATE_BYTES = 24  # state and nonce: 192 random bits each
VERIFIER_BYTES = 48  # 64 base64url characters: RFC 7636 4.1 asks for 43 to 128
ACCESS_DENIED = "access_denied"  # RFC 6749 4.1.2.1
ID_TOKEN_REQUIRED = ("iss", "sub", "aud", "exp", "iat")  # OIDC Core 1.0 2


class TokenRefused(Exception):
    """A JWT that is not accepted; ``reason`` says why, for the 401 and the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderUnavailable(Exception):
    """The provider's metadata or keys could not be read, and none are kept from before."""


class SignOnFailed(Exception):
    """A browser login that did not succeed: ``message`` is the message catalogues' key the login
    page shows, ``detail`` what the log and the audit log say; ``audit`` is False for what is no
    login attempt (a callback without the flow's cookie or with another state)."""

    def __init__(self, message: str, detail: str, *, status: int = HTTPStatus.UNAUTHORIZED, audit: bool = True,
                 username: str = "") -> None:
        super().__init__(detail)
        self.message = message
        self.detail = detail
        self.status = status
        self.audit = audit
        self.username = username


@dataclass(frozen=True)
class Flow:
    """One browser login under way, as its cookie keeps it."""

    state: str
    nonce: str
    verifier: str
    next: str
    redirect_uri: str


@dataclass(frozen=True)
class SignOn:
    """Who the provider says logged in."""

    username: str
    display_name: str
    roles: list[str] | None  # None: the provider sent no roles claim
    next: str


class _CodeFlowClient(OAuth2Client):  # type: ignore[misc]
    """authlib's OAuth 2.0 client (the authorization URL with its PKCE challenge, the token
    request and its client authentication, RFC 6749 2.3.1, and the provider's error answers,
    RFC 6749 5.2) over an httpx client."""

    def _fetch_token(self, url: str, body: str = "", headers: Any = None, auth: Any = None, method: str = "POST",
                     **kwargs: Any) -> Any:
        url, prepared, body = auth.prepare(method, url, dict(headers or {}), body)
        return self.parse_response_token(self.session.post(url, content=body, headers=prepared))


class OpenIDConnect:
    """The hospital's identity provider, as :class:`pacs.auth.access.Gate` uses it
    (``Gate.oidc``): built once with the app."""

    def __init__(self, settings: Any, *, roles: Mapping[str, frozenset[Permission]], key: bytes) -> None:
        self.settings = settings
        self.issuer: str = settings.issuer
        self.client_id: str = settings.client_id.strip()
        self.audience: str = settings.expected_audience
        self.role_names = frozenset(roles)
        self.roles_map = _roles_map(settings.roles_map, self.role_names)
        self.scope = " ".join(dict.fromkeys(["openid", *settings.scopes.split()]))  # OIDC Core 1.0 3.1.2.1
        self.leeway = int(settings.leeway_seconds)
        self._verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(settings.ca_file))
                                               if settings.ca_file else True)
        self._flows = URLSafeTimedSerializer(key, salt=FLOW_SALT)
        self._lock = threading.RLock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_until = 0.0
        self._keys: KeySet | None = None
        self._keys_until = 0.0
        self._keys_read = -float("inf")
        self._principals = _Cache()

    # -- bearer tokens ------------------------------------------------------------------------
    def principal(self, token: str, roles: Mapping[str, frozenset[Permission]]) -> Principal:
        """The principal of a bearer JWT, or 401 with the reason it is refused (503 while the
        provider's keys can't be read)."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        kept = self._principals.get(digest)
        if kept is not None:
            return kept  # type: ignore[no-any-return]
        try:
            claims = self.claims(token, audience=self.audience)
            username = self.username_of(claims)
        except TokenRefused as exc:
            log.info("bearer JWT refused: %s", exc.reason)
            raise unauthorized(f"the bearer token is refused: {exc.reason}") from None
        except ProviderUnavailable as exc:
            raise HTTPException(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        names = self.roles_of(claims) or []
        granted: set[Permission] = set()
        for role in names:
            granted |= roles.get(role, frozenset())
        name = claims.get("name")
        principal = Principal(name=username, kind="user", permissions=frozenset(granted), roles=tuple(names),
                              via="oidc", display_name=name.strip() if isinstance(name, str) else "")
        remaining = float(claims["exp"]) - time.time()
        if remaining > 0:
            self._principals.put(digest, principal, remaining)
        return principal

    def claims(self, token: str, *, audience: str | None, nonce: str | None = None) -> dict[str, Any]:
        """The claims of a JWT the provider signed, checked (RFC 7519 7.2): its signature by a
        key of the provider, ``iss``, ``aud`` (unless ``audience`` is None), ``exp``, ``nbf``,
        ``iat``; with ``nonce``, as an ID token (OIDC Core 1.0 3.1.3.7). TokenRefused otherwise."""
        header = _header(token)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            what = "unsigned (alg none)" if str(alg).lower() == "none" else f"signed with alg {alg!r}"
            raise TokenRefused(f"the token is {what}; only the identity provider's asymmetric signatures "
                               f"({', '.join(sorted(ALGORITHMS))}) are accepted")
        kid = header.get("kid")
        key = self._signing_key(kid if isinstance(kid, str) else None)
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except BadSignatureError:
            raise TokenRefused(f"the token's signature does not verify with the identity provider's key {kid!r}") from None
        except JoseError as exc:
            raise TokenRefused(f"the token can't be read as a signed JWT: {exc.description or exc.error}") from None
        claims = decoded.claims
        required = {"iss": {"essential": True, "value": self.issuer}, "exp": {"essential": True}}
        if audience is not None:
            required["aud"] = {"essential": True, "value": audience}
        if nonce is not None:
            required.update({name: {"essential": True} for name in ID_TOKEN_REQUIRED if name not in required})
        try:
            jwt.JWTClaimsRegistry(leeway=self.leeway, **required).validate(claims)  # type: ignore[arg-type]
        except ExpiredTokenError:
            raise TokenRefused(f"the token has expired (exp {claims.get('exp')})") from None
        except MissingClaimError as exc:
            raise TokenRefused(f"the token has no {exc.claim} claim (RFC 7519 4.1)") from None
        except InvalidClaimError as exc:
            raise TokenRefused(_invalid_claim(exc.claim, claims, issuer=self.issuer, audience=audience)) from None
        if nonce is not None:
            _check_id_token(claims, client_id=self.client_id, nonce=nonce)
        return claims

    def username_of(self, claims: Mapping[str, Any]) -> str:
        """The user's name: the claim ``username_claim``, else ``sub``."""
        for name in (self.settings.username_claim, "sub"):
            value = claims.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()
        raise TokenRefused(f"the token names no user ({self.settings.username_claim} or sub)")

    def roles_of(self, claims: Mapping[str, Any]) -> list[str] | None:
        """This system's roles the claims give, through ``roles_map``; None where the claim
        ``roles_claim`` is absent (a list of names, or one name)."""
        value: Any = claims
        for part in self.settings.roles_claim.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        names = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
            if isinstance(value, list) else []
        if self.roles_map:
            return sorted({role for name in names for role in self.roles_map.get(name, ())})
        return sorted({name for name in names if name in self.role_names})

    # -- the browser login --------------------------------------------------------------------
    def begin(self, *, redirect_uri: str, next: str) -> tuple[str, str]:
        """The authorization request (OIDC Core 1.0 3.1.2.1, with RFC 7636 4.3's S256 challenge):
        the URL to send the browser to, and the value of the flow's cookie."""
        endpoint = self._endpoint("authorization_endpoint")
        flow = Flow(state=secrets.token_urlsafe(STATE_BYTES), nonce=secrets.token_urlsafe(STATE_BYTES),
                    verifier=secrets.token_urlsafe(VERIFIER_BYTES), next=next, redirect_uri=redirect_uri)
        client = self._client(None, redirect_uri)
        url, _ = client.create_authorization_url(endpoint, state=flow.state, code_verifier=flow.verifier,
                                                  nonce=flow.nonce)
        cookie = self._flows.dumps([flow.state, flow.nonce, flow.verifier, flow.next, flow.redirect_uri])
        return url, cookie

    def flow(self, cookie: str) -> Flow:
        """The login under way that the flow's cookie holds, if it is ours and recent."""
        try:
            state, nonce, verifier, next, redirect_uri = self._flows.loads(cookie, max_age=FLOW_SECONDS)
        except (BadSignature, ValueError, TypeError):  # SignatureExpired is a BadSignature
            raise SignOnFailed("login.sso_state", "no single sign-on under way in this browser (its cookie is "
                               "missing, altered or expired)", status=HTTPStatus.BAD_REQUEST, audit=False) from None
        return Flow(str(state), str(nonce), str(verifier), str(next), str(redirect_uri))

    def finish(self, flow: Flow, params: Mapping[str, str]) -> SignOn:
        """The authorization response (RFC 6749 4.1.2) in ``params``: the state checked, the code
        exchanged with the verifier (RFC 7636 4.5), the ID token validated (OIDC Core 1.0
        3.1.3.7). SignOnFailed otherwise."""
        if not hmac.compare_digest(params.get("state", "").encode(), flow.state.encode()):
            raise SignOnFailed("login.sso_state", "the state of the answer is not the one sent (RFC 6749 10.12)",
                               status=HTTPStatus.BAD_REQUEST, audit=False)
        error = params.get("error")
        if error:
            description = params.get("error_description", "")
            raise SignOnFailed("login.sso_denied" if error == ACCESS_DENIED else "login.sso_failed",
                               f"the identity provider answered {error}" + (f": {description}" if description else ""))
        code = params.get("code", "")
        if not code:
            raise SignOnFailed("login.sso_failed", "the identity provider's answer has no code",
                               status=HTTPStatus.BAD_REQUEST)
        try:
            endpoint = self._endpoint("token_endpoint")
            with self._http() as http:
                token = self._client(http, flow.redirect_uri).fetch_token(
                    endpoint, grant_type="authorization_code", code=code, code_verifier=flow.verifier)
        except ProviderUnavailable as exc:
            raise SignOnFailed("login.sso_unavailable", str(exc), status=HTTPStatus.SERVICE_UNAVAILABLE) from None
        except OAuth2Error as exc:
            raise SignOnFailed("login.sso_failed", f"the token endpoint refused the code: {exc.error}"
                               + (f" ({exc.description})" if exc.description else "")) from None
        except (httpx.HTTPError, ValueError) as exc:  # unreachable, an error page, no JSON
            raise SignOnFailed("login.sso_unavailable", f"the token endpoint did not answer: {exc}",
                               status=HTTPStatus.SERVICE_UNAVAILABLE) from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise SignOnFailed("login.sso_failed", "the token response has no ID token (OIDC Core 1.0 3.1.3.3)")
        try:
            claims = self.claims(id_token, audience=self.client_id, nonce=flow.nonce)
            username = self.username_of(claims)
        except TokenRefused as exc:
            raise SignOnFailed("login.sso_failed", f"the ID token is refused: {exc.reason}") from None
        except ProviderUnavailable as exc:
            raise SignOnFailed("login.sso_unavailable", str(exc), status=HTTPStatus.SERVICE_UNAVAILABLE) from None
        roles = self.roles_of(claims)
        if roles is None:
            roles = self._roles_of_access_token(token.get("access_token"))
        name = claims.get("name")
        return SignOn(username=username, display_name=name.strip() if isinstance(name, str) else "", roles=roles,
                      next=flow.next)

    def _roles_of_access_token(self, access_token: Any) -> list[str] | None:
        """The roles in the access token, where the ID token has none (Keycloak puts
        ``realm_access`` there only). It came from the token endpoint over the back channel, for
        this client (RFC 6749 5.1), so its audience, often another (a resource server's), is not
        checked; its signature, issuer and expiry are. An opaque access token has none."""
        if not isinstance(access_token, str) or access_token.count(".") != JWS_COMPACT_PARTS - 1:
            return None
        try:
            return self.roles_of(self.claims(access_token, audience=None))
        except (TokenRefused, ProviderUnavailable) as exc:
            log.info("the access token's roles are not used: %s", exc)
            return None

    def _client(self, http: httpx.Client | None, redirect_uri: str) -> _CodeFlowClient:
        secret = self.settings.client_secret.get_secret_value() if self.settings.client_secret else None
        return _CodeFlowClient(http, client_id=self.client_id, client_secret=secret, scope=self.scope,
                               redirect_uri=redirect_uri, code_challenge_method="S256")

    # -- the provider's metadata and keys ---------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The provider's metadata (OpenID Connect Discovery 1.0, 3), read at first need and kept
        ``jwks_cache_seconds``; read again after that, the copy kept serves while that fails."""
        metadata = self._metadata
        if metadata is not None and time.monotonic() < self._metadata_until:
            return metadata
        with self._lock:
            if self._metadata is not None and time.monotonic() < self._metadata_until:
                return self._metadata
            url = self.issuer.rstrip("/") + DISCOVERY_PATH
            try:
                document = self._get_json(url)
                if document.get("issuer") != self.issuer:  # Discovery 1.0 4.3
                    raise ValueError(f"it names the issuer {document.get('issuer')!r}, not {self.issuer!r} "
                                     "([auth.oidc] issuer must be the provider's exactly)")
                if not isinstance(document.get("jwks_uri"), str):
                    raise ValueError("it names no jwks_uri")
            except (httpx.HTTPError, ValueError) as exc:
                self._metadata_until = time.monotonic() + self.settings.jwks_refetch_seconds
                if self._metadata is None:
                    raise ProviderUnavailable(f"the identity provider's metadata at {url} could not be read: {exc}") \
                        from None
                log.warning("the identity provider's metadata at %s could not be read again (%s); the copy "
                            "kept is used", url, exc)
                return self._metadata
            self._metadata = document
            self._metadata_until = time.monotonic() + self.settings.jwks_cache_seconds
            return document

    def _endpoint(self, name: str) -> str:
        url = self.metadata().get(name)
        if not isinstance(url, str) or not url:
            raise ProviderUnavailable(f"the identity provider's metadata names no {name}")
        return url

    def _signing_key(self, kid: str | None) -> Key:
        """The provider's key ``kid`` names; the keys are read again once when it is unknown
        (the provider rotated its keys), at most every ``jwks_refetch_seconds``."""
        keys = self._keys
        if keys is None or time.monotonic() >= self._keys_until:
            keys = self._read_keys(rotated=False)
        key = _find_key(keys, kid)
        if key is None:
            key = _find_key(self._read_keys(rotated=True), kid)
        if key is None:
            raise TokenRefused(f"the token's signing key {kid!r} is unknown: it is not in the identity provider's "
                               "key set (RFC 7517 5)" if kid else
                               "the token names no signing key (kid) and the identity provider has several")
        return key

    def _read_keys(self, *, rotated: bool) -> KeySet:
        with self._lock:
            now = time.monotonic()
            if self._keys is not None:
                if rotated and now - self._keys_read < self.settings.jwks_refetch_seconds:
                    return self._keys  # read a moment ago: the key is not there
                if not rotated and now < self._keys_until:
                    return self._keys  # another request read them meanwhile
            self._keys_read = now
            url = str(self.metadata()["jwks_uri"])
            try:
                keys = KeySet.import_key_set(self._get_json(url))  # type: ignore[arg-type]
            except (httpx.HTTPError, ValueError, KeyError, TypeError, JoseError) as exc:
                self._keys_until = now + self.settings.jwks_refetch_seconds
                if self._keys is None:
                    raise ProviderUnavailable(f"the identity provider's keys at {url} could not be read: {exc}") \
                        from None
                log.warning("the identity provider's keys at %s could not be read again (%s); the keys kept are "
                            "used", url, exc)
                return self._keys
            log.info("read %d key(s) of the identity provider from %s", len(keys.keys), url)
            self._keys = keys
            self._keys_until = now + self.settings.jwks_cache_seconds
            return keys

    def _http(self) -> httpx.Client:
        return httpx.Client(timeout=self.settings.timeout_seconds, verify=self._verify)

    def _get_json(self, url: str) -> dict[str, Any]:
        with self._http() as http:
            response = http.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError("the answer is no JSON object")
        return document


def _roles_map(given: Mapping[str, str | list[str]], roles: frozenset[str]) -> dict[str, tuple[str, ...]]:
    """``[auth.oidc] roles_map`` with each target a role of this system (else ValueError)."""
    mapped = {name: (target,) if isinstance(target, str) else tuple(target) for name, target in given.items()}
    unknown = sorted({role for targets in mapped.values() for role in targets if role not in roles})
    if unknown:
        raise ValueError(f"[auth.oidc] roles_map: {', '.join(unknown)} is no role here; the roles are "
                         f"{', '.join(sorted(roles))}")
    return mapped


def _header(token: str) -> dict[str, Any]:
    """The JOSE header of a JWS in compact serialization (RFC 7515 7.1), not yet trusted."""
    parts = token.split(".")
    if len(parts) != JWS_COMPACT_PARTS:
        raise TokenRefused("it is neither a token of this server nor a signed JWT (RFC 7519 3)")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, ValueError):
        raise TokenRefused("its JOSE header is not base64url-encoded JSON (RFC 7515 7.1)") from None
    if not isinstance(header, dict):
        raise TokenRefused("its JOSE header is not a JSON object (RFC 7515 4)")
    return header


def _find_key(keys: KeySet, kid: str | None) -> Key | None:
    signing = [key for key in keys.keys if key.get("use") in (None, SIGNING_USE)]
    if kid is None:
        return signing[0] if len(signing) == 1 else None
    return next((key for key in signing if key.kid == kid), None)


def _invalid_claim(claim: str, claims: Mapping[str, Any], *, issuer: str, audience: str | None) -> str:
    if claim == "aud":
        return f"the token is for another audience (aud {claims.get('aud')!r}; this server is {audience!r})"
    if claim == "iss":
        return f"the token was issued by {claims.get('iss')!r}, not by the identity provider {issuer!r}"
    if claim == "nbf":
        return f"the token is not valid yet (nbf {claims.get('nbf')})"
    if claim == "iat":
        return f"the token was issued in the future (iat {claims.get('iat')})"
    return f"the token's {claim} claim is invalid (RFC 7519 4.1)"


def _check_id_token(claims: Mapping[str, Any], *, client_id: str, nonce: str) -> None:
    """What OIDC Core 1.0 3.1.3.7 asks of an ID token beyond a JWT's checks: ``azp`` where it
    has several audiences (4, 5), and the nonce the authorization request sent (11)."""
    audiences = claims.get("aud")
    azp = claims.get("azp")
    if isinstance(audiences, list) and len(audiences) > 1 and azp is None:
        raise TokenRefused("the ID token has several audiences and no azp (OIDC Core 1.0 3.1.3.7)")
    if azp is not None and azp != client_id:
        raise TokenRefused(f"the ID token was issued to {azp!r} (azp), not to this client {client_id!r}")
    given = claims.get("nonce")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), nonce.encode()):
        raise TokenRefused("the ID token's nonce is not the one this login sent (OIDC Core 1.0 3.1.3.7)")
