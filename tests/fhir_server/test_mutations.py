"""Seeded mutations of the golden FHIR resources: whatever a client's JSON becomes, the answer
is a success or a 4xx OperationOutcome, never a 500, and the server goes on taking orders."""

from __future__ import annotations

import copy
import json
import logging
import random
from typing import Any

import httpx
import pytest

from tests.helpers import DATA

RESOURCES = [json.loads(path.read_text(encoding="utf-8")) for path in sorted((DATA / "fhir").glob("*.json"))]
# Values of the wrong shape where FHIR has a string, an array or an object; references that
# name nothing; ids in digits int() does not read; huge numbers and strings.
ATOMS: list[Any] = [None, "", "x", 0, -1, 10**30, 1.5, True, [], {}, "2026-13-45", "Patient/³",
                    "Patient/999999999999999999999", "#p1", "urn:uuid:nope", "张三", "\u0000", "a" * 5000,
                    {"reference": "Patient/1"}, [{"text": "x"}], {"resourceType": {"not": "a name"}}]


def mutate(node: Any, rng: random.Random) -> None:
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        roll = rng.random()
        if roll < 0.25:
            del node[key]
        elif roll < 0.5:
            node[key] = copy.deepcopy(rng.choice(ATOMS))
        else:
            mutate(node[key], rng)
    elif isinstance(node, list) and node:
        at = rng.randrange(len(node))
        roll = rng.random()
        if roll < 0.2:
            del node[at]
        elif roll < 0.4:
            node[at] = copy.deepcopy(rng.choice(ATOMS))
        elif roll < 0.5:
            node.append(copy.deepcopy(node[at]))
        else:
            mutate(node[at], rng)


@pytest.mark.parametrize("seed", [3, 4])
def test_every_mutated_resource_gets_an_answer_that_is_not_a_500(server, seed, caplog):
    rng = random.Random(seed)
    statuses: dict[int, int] = {}
    with caplog.at_level(logging.ERROR), httpx.Client(base_url=server.http_url, timeout=30) as client:
        for number in range(300):
            body = copy.deepcopy(rng.choice(RESOURCES))
            for _ in range(rng.randint(1, 4)):
                mutate(body, rng)
            path = "/fhir" if body.get("resourceType") == "Bundle" else "/fhir/ServiceRequest"
            response = client.post(path, content=json.dumps(body, ensure_ascii=False),
                                   headers={"Content-Type": "application/fhir+json"})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (number, response.text[:300])
            if response.status_code >= 400:
                assert response.json()["resourceType"] == "OperationOutcome", (number, response.text[:300])
        good = copy.deepcopy(RESOURCES[-1])
        assert client.post("/fhir/ServiceRequest" if good["resourceType"] != "Bundle" else "/fhir",
                           json=good, headers={"Content-Type": "application/fhir+json"}).status_code < 300
    assert not [r for r in caplog.records if "batch failed" in r.getMessage() or "FHIR message" in r.getMessage()]
    assert len(statuses) > 2  # the mutations reach several outcomes
