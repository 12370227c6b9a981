"""Bearer tokens for the services this system calls (the hospital platform's FHIR server): a
fixed token from the settings, or one obtained with the OAuth 2.0 client credentials grant
(RFC 6749 4.4) and kept until shortly before it expires.

The token request is a POST of ``grant_type=client_credentials`` (and ``scope``) to the token
endpoint, the client authenticated with HTTP Basic (RFC 6749 2.3.1, its identifier and secret
form-encoded first); the answer is a JSON object with ``access_token``, ``token_type`` "Bearer"
and, as a rule, ``expires_in`` (RFC 6749 5.1). The token goes out as ``Authorization: Bearer``
(RFC 6750 2.1). A 401 from the service (a token revoked or expired early) makes it ask for a new
one once and send the request again. The token request goes through the same HTTP client as the
calls, so it takes the same TLS settings (CA, client certificate).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Generator
from urllib.parse import quote_plus

import httpx

log = logging.getLogger(__name__)

EXPIRY_MARGIN_SECONDS = 30.0  # a token is renewed this long before it expires ...
EXPIRY_MARGIN_SHARE = 0.5  # ... or, for a short-lived one, once this share of its life is gone
DEFAULT_LIFETIME_SECONDS = 300.0  # for a token answer without expires_in (RFC 6749 5.1: RECOMMENDED)
UNAUTHORIZED = 401


class TokenError(ConnectionError):
    """No token could be had: the token endpoint refused the client or did not answer as RFC
    6749 5.1 says. A connection error to the outbox, which tries again later: items wait until
    the credentials are put right instead of being refused one by one."""


class BearerToken(httpx.Auth):
    """A fixed bearer token (RFC 6750 2.1)."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class ClientCredentials(httpx.Auth):
    """Tokens from ``token_url`` by the client credentials grant (RFC 6749 4.4), kept until
    shortly before they expire (:data:`EXPIRY_MARGIN_SECONDS`) and shared by every request."""

    requires_response_body = True  # the token answer is read in the flow

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.scope = scope
        # RFC 6749 2.3.1: the identifier and secret form-encoded (Appendix B), then HTTP Basic
        pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
        self._basic = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = threading.Lock()
        self.issued = 0  # tokens obtained so far

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._kept()
        if token is None:
            token = self._take((yield self._token_request()))
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == UNAUTHORIZED:
            self._forget(token)
            token = self._take((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    def _kept(self) -> str | None:
        with self._lock:
            return self._token if self._token is not None and time.monotonic() < self._renew_at else None

    def _forget(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def _token_request(self) -> httpx.Request:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        return httpx.Request("POST", self.token_url, data=form,
                             headers={"Authorization": self._basic, "Accept": "application/json"})

    def _take(self, response: httpx.Response) -> str:
        """The token of a token endpoint's answer (RFC 6749 5.1), kept; raises
        :class:`TokenError` for an error answer (RFC 6749 5.2) or one that is not a token."""
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != httpx.codes.OK or not isinstance(answer, dict):
            error = answer.get("error", "") if isinstance(answer, dict) else ""
            described = answer.get("error_description", "") if isinstance(answer, dict) else ""
            raise TokenError(f"the token endpoint {self.token_url} answered {response.status_code}"
                             + (f" {error}" if error else "") + (f": {described}" if described else ""))
        token, kind = answer.get("access_token"), str(answer.get("token_type", ""))
        if not isinstance(token, str) or not token or kind.lower() != "bearer":
            raise TokenError(f"the token endpoint {self.token_url} answered no bearer token (token_type {kind!r})")
        try:
            lifetime = float(answer.get("expires_in", DEFAULT_LIFETIME_SECONDS))
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME_SECONDS
        margin = min(EXPIRY_MARGIN_SECONDS, lifetime * EXPIRY_MARGIN_SHARE)
        with self._lock:
            self._token = token
            self._renew_at = time.monotonic() + lifetime - margin
            self.issued += 1
        log.info("a token for %s from %s, valid for %.0f s", self.client_id, self.token_url, lifetime)
        return token
