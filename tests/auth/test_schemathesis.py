"""schemathesis against the OpenAPI schema of a server that asks who is calling (issue 19's
proof), over real HTTP, the schema read from the server's own ``/openapi.json``:

- without credentials every operation but the public ones answers 401;
- each role, logged in through the form (a session cookie and its CSRF token), gets 403 for
  what its permissions (:data:`pacs.auth.roles.ROLE_PERMISSIONS`) don't cover, and neither 401
  nor 403 for what they do; the permission each operation needs is read from the dependency
  its route declares (``require``, ``require_by_method``, ``require_fhir``), not listed here;
- an administrator (HTTP Basic) never gets a 5xx (schemathesis's ``not_a_server_error``),
  with inputs valid and invalid by the schema.

Generation is bounded (``EXAMPLES_*`` per operation; ``PACS_SCHEMATHESIS_EXAMPLES`` sets the
administrator's, for a longer search) and seeded (Hypothesis's ``derandomize``): a run sends the
same requests as the last.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import requests
import schemathesis
from fastapi.responses import StreamingResponse
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup

from pacs.auth.roles import FHIR_RESOURCES, ROLE_PERMISSIONS, Permission, fhir_permission
from pacs.auth.sessions import COOKIE, CSRF_HEADER
from tests.auth.test_access import add_user, api_routes, basic
from tests.conftest import ADMIN_PASSWORD, one_database
from tests.test_http_hostile import prepare

EXAMPLES_ANONYMOUS = 8  # generated requests per operation without credentials
EXAMPLES_PER_ROLE = 4  # per operation and role
EXAMPLES_ADMIN = int(os.environ.get("PACS_SCHEMATHESIS_EXAMPLES", "20"))  # per operation and mode, as admin
REQUEST_SECONDS = 60
PASSWORD = "correct horse 1"
UNAUTHORIZED, FORBIDDEN, SERVER_ERROR = 401, 403, 500
# Each type the generic FHIR search serves, besides the generated (unknown) ones.
FHIR_TYPE_PARAMETER = "resource_type"
FHIR_TYPES = (*FHIR_RESOURCES, "Observation")

# A path or query holding U+0000 is refused with 400 before anyone is asked who they are
# (pacs.http.RefuseNul, in each protocol's shape); the access checks generate none.
WITHOUT_NUL = schemathesis.Config.from_dict({"generation": {"allow-x00": False}})
WITH_NUL = schemathesis.Config.from_dict({"generation": {"allow-x00": True}})
STREAM_LEFT_UNREAD = "(an event stream, left unread)"

Declared = Callable[..., Any]  # the dependency that declares a route's permission


def hypothesis_settings(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                    phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))


def streams(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of the routes that answer with a stream that may not end."""
    return {(method, route.path) for route in api_routes(app.routes) for method in route.methods
            if isinstance(route.response_class, type) and issubclass(route.response_class, StreamingResponse)}


@dataclass
class Streamed:
    """The answer of a route that streams (the desk's order changes): its status and headers;
    the stream, which goes on until something happens, is left unread."""

    status_code: int
    headers: dict[str, list[str]]
    request: requests.PreparedRequest
    text: str = STREAM_LEFT_UNREAD


def call(case: schemathesis.Case, url: str, http: requests.Session,
         streaming: set[tuple[str, str]]) -> schemathesis.Response | Streamed:
    """Send ``case``: through schemathesis, or for a stream its head only."""
    if (case.method.upper(), case.operation.path) not in streaming:
        return case.call(base_url=url, session=http, timeout=REQUEST_SECONDS)
    with http.request(**case.as_transport_kwargs(base_url=url), stream=True, timeout=REQUEST_SECONDS) as response:
        return Streamed(response.status_code, {k.lower(): [v] for k, v in response.headers.items()},
                        response.request)


def declared_dependencies(app: Any) -> dict[tuple[str, str], Declared]:
    """(method, path template) of every API route → the dependency declaring its permission."""
    found = {}
    for route in api_routes(app.routes):
        stack, calls = [route.dependant], []
        while stack:
            dependant = stack.pop()
            calls += [d.call for d in dependant.dependencies]
            stack += dependant.dependencies
        [declaring] = [c for c in calls if hasattr(c, "permission")]
        for method in route.methods:
            found[(method, route.path)] = declaring
    return found


def is_public(declaring: Declared) -> bool:
    return bool(getattr(declaring, "public", False))


def needed(declaring: Declared, case: schemathesis.Case) -> Permission | tuple[Permission, ...] | None:
    """The permission the request ``case`` needs, as its route declares it (None: only to be
    someone, as for a FHIR type this server does not serve; a tuple: any one of them)."""
    permission = declaring.permission  # type: ignore[attr-defined]
    method = case.method.upper()
    if isinstance(permission, Permission | tuple) or permission is None:
        return permission
    if isinstance(permission, dict):  # require_by_method: a method not named needs the first listed
        return permission.get(method, next(iter(permission.values())))
    # require_fhir: the permission behind the resource type in the path
    return fhir_permission(str(case.path_parameters.get(FHIR_TYPE_PARAMETER, "")), write=method not in ("GET", "HEAD"))


def serving(declared: dict[tuple[str, str], Declared], declaring: Declared, case: schemathesis.Case) -> Declared:
    """The declaration of the route that serves ``case``: a FHIR type with a route of its own
    (``GET /fhir/DiagnosticReport``) is served by it, not by the generic ``/fhir/{resource_type}``."""
    resource = (case.path_parameters or {}).get(FHIR_TYPE_PARAMETER)
    if resource:
        own = declared.get((case.method.upper(),
                            case.operation.path.replace(f"{{{FHIR_TYPE_PARAMETER}}}", str(resource))))
        if own is not None:
            return own
    return declaring


def strategies(operation: schemathesis.APIOperation, mode: GenerationMode) -> Any:
    """The operation's generated requests; for the generic FHIR search, each served type too."""
    generated = operation.as_strategy(generation_mode=mode)
    if f"{{{FHIR_TYPE_PARAMETER}}}" not in operation.path:
        return generated
    fixed = [operation.as_strategy(generation_mode=mode, path_parameters={FHIR_TYPE_PARAMETER: name})
             for name in FHIR_TYPES]
    return st.one_of(generated, *fixed)


def operations(url: str, config: schemathesis.Config) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config, timeout=REQUEST_SECONDS)
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) > 30  # the schema has the API, FHIR and DICOMweb operations
    return found


def each_case(operation: schemathesis.APIOperation, mode: GenerationMode, examples: int,
              check: Callable[[schemathesis.Case], None]) -> None:
    @hypothesis_settings(examples)
    @given(case=strategies(operation, mode))
    def run(case: schemathesis.Case) -> None:
        check(case)

    run()


CONSTRAINTS = ('"type": "integer"', '"type": "number"', '"type": "boolean"', '"type": "array"', '"type": "object"',
               '"enum"', '"const"', '"format"', '"pattern"', '"minLength"', '"maxLength"', '"minimum"', '"maximum"',
               '"$ref"')


def modes(operation: schemathesis.APIOperation) -> list[GenerationMode]:
    """Inputs valid by the schema; and invalid ones where the schema says more than "a string"
    (in a URL, a header or a query, any text is a string: nothing to make invalid)."""
    raw = operation.definition.raw
    schemas = json.dumps([parameter.get("schema", {}) for parameter in raw.get("parameters", [])])
    constrained = "requestBody" in raw or any(constraint in schemas for constraint in CONSTRAINTS)
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if constrained else [GenerationMode.POSITIVE]


def describe(case: schemathesis.Case, response: schemathesis.Response | Streamed) -> str:
    return f"{case.method} {response.request.path_url[:200]} → {response.status_code} {response.text[:200]}"


@contextmanager
def browser(url: str, username: str, password: str) -> Iterator[requests.Session]:
    """A requests session logged in through the form, sending the session's CSRF token."""
    with requests.Session() as session:
        form = session.get(f"{url}/login", timeout=REQUEST_SECONDS)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        done = session.post(f"{url}/login", data={"username": username, "password": password, "next": "/",
                                                  "csrf_token": token}, allow_redirects=False,
                            timeout=REQUEST_SECONDS)
        assert done.status_code == 303 and COOKIE in session.cookies, done.text
        home = session.get(f"{url}/", timeout=REQUEST_SECONDS)
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text).group(1)  # type: ignore[union-attr]
        session.headers[CSRF_HEADER] = csrf
        yield session


def seed(server: Any) -> None:
    """An order, its patient and two instances, so that lists and reads find something."""
    with httpx.Client(base_url=server.http_url, timeout=REQUEST_SECONDS,
                      headers=basic("admin", ADMIN_PASSWORD)) as client:
        prepare(client)


@one_database
def test_without_credentials_every_operation_but_the_public_ones_answers_401(guarded_server):
    declared = declared_dependencies(guarded_server.server.app)
    streaming = streams(guarded_server.server.app)
    wrong: list[str] = []
    checked = 0
    with requests.Session() as http:
        for operation in operations(guarded_server.http_url, WITHOUT_NUL):
            declaring = declared[(operation.method.upper(), operation.path)]

            def check(case: schemathesis.Case, declaring: Declared = declaring) -> None:
                nonlocal checked
                response = call(case, guarded_server.http_url, http, streaming)
                checked += 1
                public = is_public(declaring)
                if (response.status_code == UNAUTHORIZED) == public or response.status_code >= SERVER_ERROR:
                    wrong.append(describe(case, response))
                elif not public and not any("Bearer" in v for v in response.headers.get("www-authenticate", [])):
                    wrong.append(f"{describe(case, response)}: no WWW-Authenticate challenge")

            each_case(operation, GenerationMode.POSITIVE, EXAMPLES_ANONYMOUS, check)
    assert not wrong, "\n".join(wrong[:30])
    assert checked > len(declared)


@one_database
def test_each_role_is_refused_what_its_permissions_do_not_cover(guarded_server, installed_assets):
    seed(guarded_server)
    declared = declared_dependencies(guarded_server.server.app)
    streaming = streams(guarded_server.server.app)
    found = operations(guarded_server.http_url, WITHOUT_NUL)
    wrong: list[str] = []
    refused: dict[str, int] = {}
    for role, holds in sorted(ROLE_PERMISSIONS.items()):
        add_user(guarded_server, f"user-{role}", [role], PASSWORD)
        refused[role] = 0
        with browser(guarded_server.http_url, f"user-{role}", PASSWORD) as http:
            for operation in found:
                declaring = declared[(operation.method.upper(), operation.path)]
                if is_public(declaring):
                    continue

                def check(case: schemathesis.Case, declaring: Declared = declaring, role: str = role,
                          holds: frozenset[Permission] = holds) -> None:
                    response = call(case, guarded_server.http_url, http, streaming)
                    permission = needed(serving(declared, declaring, case), case)
                    may = (permission is None or permission in holds if not isinstance(permission, tuple)
                           else any(one in holds for one in permission))
                    status = response.status_code
                    if not may and status != FORBIDDEN:
                        wrong.append(f"{role} without {permission}: {describe(case, response)}")
                    elif may and status in (UNAUTHORIZED, FORBIDDEN):
                        wrong.append(f"{role} with {permission}: {describe(case, response)}")
                    elif status >= SERVER_ERROR:
                        wrong.append(f"{role}: {describe(case, response)}")
                    refused[role] += status == FORBIDDEN

                each_case(operation, GenerationMode.POSITIVE, EXAMPLES_PER_ROLE, check)
    assert not wrong, "\n".join(wrong[:30])
    assert all(refused[str(role)] for role in ROLE_PERMISSIONS if role != "admin"), refused
    assert refused["admin"] == 0


def test_an_administrator_gets_no_server_error(guarded_server, installed_assets):
    seed(guarded_server)
    streaming = streams(guarded_server.server.app)
    errors: list[str] = []
    with requests.Session() as http:
        http.headers.update(basic("admin", ADMIN_PASSWORD))
        for operation in operations(guarded_server.http_url, WITH_NUL):
            for mode in modes(operation):

                def check(case: schemathesis.Case) -> None:
                    response = call(case, guarded_server.http_url, http, streaming)
                    assert response.status_code not in (UNAUTHORIZED, FORBIDDEN), describe(case, response)
                    if isinstance(response, Streamed):
                        if response.status_code >= SERVER_ERROR:
                            errors.append(describe(case, response))
                        return
                    try:
                        case.validate_response(response, checks=[not_a_server_error])
                    except FailureGroup:
                        errors.append(describe(case, response))

                try:
                    each_case(operation, mode, EXAMPLES_ADMIN, check)
                except Unsatisfiable:  # nothing of it could be made invalid after all
                    assert mode == GenerationMode.NEGATIVE, operation.label
    assert not errors, "\n".join(errors[:30])
