"""Seeded mutations of the golden HL7 messages over MLLP: whatever a sender's bytes become, every
frame is acknowledged (AA, AE or AR, in the separator the message declared), no intake batch
fails, and the listener goes on serving."""

from __future__ import annotations

import logging
import os
import random

import pytest

from tests.helpers import DATA, MLLPClient

MESSAGES = [path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
            for path in sorted((DATA / "hl7").glob("*.hl7"))]
# What senders get wrong: delimiters, segment breaks, NUL and stray bytes, broken UTF-8 and
# GB 18030, numbers past any column, impossible dates, escape sequences, other event codes.
PIECES = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\x00", b"\xff", "中".encode(), b"\xc3", b"9" * 30, b"-1",
          b"\xb3", b"MSH|", b"", b"A40", b"NW", b"CA", b"XO", b"99999999999999999999", b"20261301",
          b"2026022930", b"\\X00\\", b"\\E\\", "张".encode("gb18030"),
          # MSH-18 names that are Python codecs but no character set
          b"UU", b"BASE64", b"ROT13", b"HEX", b"UNDEFINED", b"IDNA", b"CP037"]
ANSWERS = {b"AA", b"AE", b"AR"}
INPUTS = int(os.environ.get("PACS_HOSTILE_INPUTS", "300"))


def mutate(message: bytes, rng: random.Random) -> bytes:
    data = bytearray(message)
    for _ in range(rng.randint(1, 6)):
        roll, at = rng.random(), rng.randrange(len(data) + 1)
        if roll < 0.3 and data:
            del data[at:at + rng.randint(1, 20)]
        elif roll < 0.6:
            data[at:at] = rng.choice(PIECES)
        elif roll < 0.8 and data:
            data[at % len(data)] = rng.randrange(256)
        else:
            fields = bytes(data).split(b"|")
            fields[rng.randrange(len(fields))] = rng.choice(PIECES)
            data = bytearray(b"|".join(fields))
    return bytes(data).replace(b"\x0b", b"").replace(b"\x1c", b"")  # MLLP's own framing bytes


def msa_code(ack: bytes) -> bytes:
    separator = ack[3:4] or b"|"
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA"):
            fields = segment.split(separator)
            return fields[1] if len(fields) > 1 else b""
    return b""


@pytest.mark.parametrize("seed", [1, 2])
def test_every_mutated_message_is_acknowledged(server, seed, caplog):
    rng = random.Random(seed)
    codes: dict[bytes, int] = {}
    with caplog.at_level(logging.ERROR), MLLPClient(server.mllp_port) as client:
        for number in range(INPUTS):
            sent = mutate(rng.choice(MESSAGES), rng)
            code = msa_code(client.send(sent))
            assert code in ANSWERS, (number, sent[:200])
            codes[code] = codes.get(code, 0) + 1
        fresh = (MESSAGES[0].replace(b"|ADT0001|", b"|ADT9999|", 1)  # a patient no mutation touched
                 .replace(b"P10001", b"P77777").replace(b"110101199001011234", b"110101199001017777"))
        assert msa_code(client.send(fresh)) == b"AA"  # the same connection still serves
    assert not [r for r in caplog.records if "batch failed" in r.getMessage()]
    assert not [r.getMessage() for r in caplog.records if r.exc_info]  # a traceback is a bug
    assert codes.get(b"AR") and codes.get(b"AA")  # the mutations reach both outcomes
