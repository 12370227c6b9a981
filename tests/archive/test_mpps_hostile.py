"""Hostile MPPS: seeded, bounded mutations of N-CREATE and N-SET from a real pynetdicom SCU.

Every attribute, at every nesting level, is dropped, emptied, mangled or sent with the wrong VR;
states go wrong (a status other than IN PROGRESS at creation, a second N-CREATE, an N-SET of an
unknown or ended instance). Each request must get the status PS3.4 names (Table F.7.2-1,
5.4.2.1, F.7.2.1.3, F.7.2.2.3): never 0x0000 for what the standard requires, never a 0x0110
processing failure for the SCU's own mistake, never an abort; a refused request changes nothing;
the server keeps serving and logs no traceback.

``PACS_HOSTILE_INPUTS`` sets how many inputs run (by default one pass, about 300: every attribute
× mutation and the state cases, shuffled; more repeat them with other random values);
``PACS_HOSTILE_SEED`` gives another order and other values.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from pacs.archive.mpps import F_7_2_1, NOT_ALLOWED
from tests.archive.test_mpps import STUDY
from tests.dicom import client, completion, mpps_attributes
from tests.helpers import send_all

INPUTS = int(os.environ.get("PACS_HOSTILE_INPUTS", "0"))  # 0: one pass over every case
SEED = int(os.environ.get("PACS_HOSTILE_SEED", "18"))

SUCCESS, NO_SUCH_ATTRIBUTE, INVALID_VALUE = 0x0000, 0x0105, 0x0106
PROCESSING_FAILURE, DUPLICATE, NO_SUCH_INSTANCE, INVALID_INSTANCE = 0x0110, 0x0111, 0x0112, 0x0117
MISSING, MISSING_VALUE = 0x0120, 0x0121
MAY_NO_LONGER_BE_UPDATED = 0xA710
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SPECIFIC_CHARACTER_SET = 0x00080005

# Values no UI, DA or TM can hold (none blank), and awkward for every other VR; the ones beyond
# ASCII only where the VR's text follows the Specific Character Set (PS3.5 6.1.2.3)
GARBAGE = ["x!", "1.2.x", "2026-13-45", "25:99", "1\\2", "A" * 70, "'; DROP TABLE study; --", "\x01\x02"]
TEXT_GARBAGE = [*GARBAGE, "张三!", "=^=^", "\x1b$B"]
CHARSET_VRS = ("SH", "LO", "ST", "LT", "UC", "UT", "PN")
# A value of each VR, for sending an attribute under a VR not its own (explicit VR only)
OTHER_VR = {"US": 7, "SS": -7, "UL": 70000, "FD": 1.5, "AT": 0x00100010, "OB": b"\x01\x02", "LO": "x",
            "DA": "20260101", "UI": "1.2.3"}


def code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "99PACS"
    item.CodeMeaning = meaning
    return item


def reference(uid: str, sop_class: str = CT_IMAGE) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    return item


def creation() -> Dataset:
    """A full N-CREATE: every level the table describes has an item to damage."""
    ds = mpps_attributes(study_uid=STUDY, accession="ACC0001", sps_id="SPS0001")
    step = ds.ScheduledStepAttributesSequence[0]
    step.ReferencedStudySequence = [reference(STUDY, "1.2.840.10008.3.1.2.3.1")]
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "HOSP"
    step.IssuerOfAccessionNumberSequence = [issuer]
    step.RequestedProcedureCodeSequence = [code("CT0001", "胸部CT平扫")]
    step.ScheduledProtocolCodeSequence = [code("CHEST", "Chest")]
    ds.ReferencedPatientSequence = [reference("1.2.3.99", "1.2.840.10008.3.1.2.1.1")]
    ds.ProcedureCodeSequence = [code("CT0001", "胸部CT平扫")]
    ds.CommentsOnThePerformedProcedureStep = ""
    return ds


def ending() -> Dataset:
    """A full N-SET COMPLETED."""
    ds = completion()
    ds.PerformedSeriesSequence[0].ReferencedNonImageCompositeSOPInstanceSequence = [
        reference("1.2.3.4.5.6.99", "1.2.840.10008.5.1.4.1.1.88.67")]
    ds.ProcedureCodeSequence = [code("CT0001", "胸部CT平扫")]
    ds.CommentsOnThePerformedProcedureStep = "done"
    return ds


# -- where and what to damage -------------------------------------------------------------------

Parents = tuple[tuple[int, int], ...]  # (sequence tag, item index) down to the element


def elements(ds: Dataset, parents: Parents = ()) -> Iterator[tuple[Parents, int]]:
    for element in ds:
        yield parents, element.tag
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from elements(item, (*parents, (element.tag, index)))


def holder(ds: Dataset, parents: Parents) -> Dataset:
    for tag, index in parents:
        ds = ds[tag].value[index]
    return ds


def keyword_path(parents: Parents, tag: int) -> str:
    return ">".join([*(keyword_for_tag(t) for t, _ in parents), keyword_for_tag(tag)])


def types(parents: Parents, tag: int, operation: str) -> tuple[str, str] | None:
    """The (SCU, SCP) requirement types of Table F.7.2-1 for this attribute, as the SCP declares
    them, or None for an attribute the table leaves to "all other attributes"."""
    row = F_7_2_1.get(keyword_path(parents, tag))
    if row is None:
        return None
    column = row.create if operation == "N-CREATE" else row.set
    if column == NOT_ALLOWED:
        return NOT_ALLOWED, NOT_ALLOWED
    scu, scp = column.split("/")
    return scu, scp


@dataclass
class Case:
    label: str
    operation: str  # "N-CREATE", "N-SET" or a state case
    dataset: Dataset | None = None
    expected: set[int] = field(default_factory=set)
    explicit: bool = False  # sent over Explicit VR Little Endian (a wrong VR shows only there)


def mutate(rng: random.Random, operation: str, base: Dataset, parents: Parents, tag: int, how: str) -> Case:
    ds = copy.deepcopy(base)
    parent = holder(ds, parents)
    element = parent[tag]
    kind = types(parents, tag, operation)
    scu, scp = kind or ("3", "3")
    name = keyword_path(parents, tag)
    final_state = operation == "N-SET"  # the N-SET ends the step: the final state is checked too
    if how == "drop":
        del parent[tag]
        if scu == "1":
            expected = {MISSING}
        elif scu == "2" and not final_state:
            expected = {SUCCESS}  # taken as sent empty (mpps._demands)
        elif final_state:
            expected = {SUCCESS, MISSING, MISSING_VALUE}
        else:
            expected = {SUCCESS, MISSING}  # a 1C's condition may now hold
        return Case(f"{operation} {name} dropped", operation, ds, expected)
    if how == "empty":
        element.value = [] if element.VR == "SQ" else ""
        if scu == "1" or (operation == "N-SET" and scp == "1"):
            expected = {MISSING_VALUE}
        else:
            expected = {SUCCESS, MISSING_VALUE}
        return Case(f"{operation} {name} empty", operation, ds, expected)
    if how == "vr":
        vr = rng.choice(sorted(v for v in OTHER_VR if v != element.VR and v != dictionary_VR(tag)))
        parent[tag] = DataElement(tag, vr, OTHER_VR[vr])
        expected = {INVALID_VALUE} if kind else {SUCCESS, INVALID_VALUE}
        return Case(f"{operation} {name} as {vr}", operation, ds, expected, explicit=True)
    # mangled
    if element.VR == "SQ":
        element.value = [*element.value, Dataset()]  # an item with nothing in it
        expected = {SUCCESS, MISSING, MISSING_VALUE}
        return Case(f"{operation} {name} + empty item", operation, ds, expected)
    value = rng.choice(TEXT_GARBAGE if element.VR in CHARSET_VRS else GARBAGE)
    element.value = value
    checked = dictionary_VR(tag) in ("UI", "DA", "TM") or keyword_for_tag(tag) == "PerformedProcedureStepStatus"
    expected = {INVALID_VALUE} if kind and checked else {SUCCESS, INVALID_VALUE}
    return Case(f"{operation} {name} = {value[:12]!r}", operation, ds, expected)


def state_cases() -> list[Case]:
    cases = [Case(f"N-CREATE with status {status!r}", "N-CREATE", _with_status(status), {INVALID_VALUE})
             for status in ("COMPLETED", "DISCONTINUED", "DONE", "in progress")]
    cases += [Case(label, label) for label in (
        "second N-CREATE", "N-SET of an unknown instance", "N-SET after COMPLETED", "N-SET after DISCONTINUED",
        "N-SET IN PROGRESS then COMPLETED", "N-CREATE with an invalid instance UID", "N-SET not allowed")]
    return cases


def _with_status(status: str) -> Dataset:
    ds = creation()
    ds.PerformedProcedureStepStatus = status
    return ds


Plan = tuple[str, Dataset, Parents, int, str]  # (operation, base, where, tag, how): one mutation


def plan() -> list[Plan | Case]:
    """Every attribute × mutation, and the state cases."""
    mutations: list[Plan | Case] = [
        (operation, base, parents, tag, how)
        for operation, base in (("N-CREATE", creation()), ("N-SET", ending()))
        for parents, tag in elements(base)
        for how in ("drop", "empty", "mangle", "vr")
        if not (how == "vr" and tag == SPECIFIC_CHARACTER_SET)]  # the SCU encodes its text by it
    return [*mutations, *state_cases()]


def cases(rng: random.Random, inputs: int) -> Iterator[Case]:
    """``inputs`` cases (0: one pass over :func:`plan`), shuffled; past one pass, drawn again
    with other random values."""
    every = plan()
    first = list(every)
    rng.shuffle(first)
    drawn = itertools.chain(first, (rng.choice(every) for _ in itertools.count()))
    for item in itertools.islice(drawn, inputs or len(every)):
        yield item if isinstance(item, Case) else mutate(rng, *item)


# -- the run ------------------------------------------------------------------------------------

SERIAL = itertools.count(1)  # the instance UIDs the modality makes, one per step


class Modality:
    """Two associations of one modality: the default (implicit VR) one and an explicit VR one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.implicit = self._associate(None)
        self.explicit = self._associate(ExplicitVRLittleEndian)

    def _associate(self, syntax: str | None):
        assoc = client("CT1", syntax).associate("127.0.0.1", self.port, ae_title="PACS")
        assert assoc.is_established
        # a request's command and data set go in two writes: without this, Nagle's algorithm holds
        # the second for the server's delayed ACK, 40 ms a request
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return assoc

    def uid(self) -> str:
        return f"1.2.826.0.1.3680043.8.498.18.{next(SERIAL)}"

    def create(self, ds: Dataset, uid: str, explicit: bool = False) -> Dataset:
        status, _ = (self.explicit if explicit else self.implicit).send_n_create(
            ds, ModalityPerformedProcedureStep, uid)
        return status

    def set(self, ds: Dataset, uid: str, explicit: bool = False) -> Dataset:
        status, _ = (self.explicit if explicit else self.implicit).send_n_set(ds, ModalityPerformedProcedureStep, uid)
        return status

    def alive(self) -> bool:
        return self.implicit.is_established and self.explicit.is_established

    def release(self) -> None:
        self.implicit.release()
        self.explicit.release()


def code_of(status: Dataset) -> int | None:
    return int(status.Status) if "Status" in status else None  # no Status: no answer (an abort)


def run(modality: Modality, case: Case) -> list[str]:
    """The case's requests and the checks after them; the problems found."""
    problems: list[str] = []

    def expect(what: str, status: Dataset, allowed: set[int], error_id: int | None = None) -> int | None:
        got = code_of(status)
        if got not in allowed:
            problems.append(f"{what}: {got if got is None else hex(got)} not in {sorted(hex(s) for s in allowed)}"
                            f" ({status.get('ErrorComment', '')})")
        elif error_id is not None and status.get("ErrorID") != error_id:
            problems.append(f"{what}: Error ID {status.get('ErrorID')} instead of {error_id:#06x}")
        return got

    uid = modality.uid()
    if case.operation == "N-CREATE":
        got = expect(case.label, modality.create(case.dataset, uid, case.explicit), case.expected)
        # what was refused does not exist; what was accepted can be ended
        expect("then N-SET", modality.set(ending(), uid), {SUCCESS} if got == SUCCESS else {NO_SUCH_INSTANCE})
    elif case.operation == "N-SET":
        expect("N-CREATE", modality.create(creation(), uid), {SUCCESS})
        got = expect(case.label, modality.set(case.dataset, uid, case.explicit), case.expected)
        ended = got == SUCCESS and str(case.dataset.get("PerformedProcedureStepStatus", "")).strip() in (
            "COMPLETED", "DISCONTINUED")
        then = modality.set(ending(), uid)
        if ended:  # F.7.2.2.3
            expect("then N-SET", then, {PROCESSING_FAILURE}, MAY_NO_LONGER_BE_UPDATED)
        else:  # a refused N-SET changed nothing: the step can still be ended
            expect("then N-SET", then, {SUCCESS})
    elif case.label == "second N-CREATE":
        expect("N-CREATE", modality.create(creation(), uid), {SUCCESS})
        expect(case.label, modality.create(creation(), uid), {DUPLICATE})
    elif case.label == "N-SET of an unknown instance":
        expect(case.label, modality.set(ending(), uid), {NO_SUCH_INSTANCE})
    elif case.label.startswith("N-SET after"):
        status = case.label.rsplit(" ", 1)[1]
        expect("N-CREATE", modality.create(creation(), uid), {SUCCESS})
        expect(status, modality.set(completion(status), uid), {SUCCESS})
        expect(case.label, modality.set(ending(), uid), {PROCESSING_FAILURE}, MAY_NO_LONGER_BE_UPDATED)
        again = Dataset()
        again.PerformedProcedureStepStatus = "IN PROGRESS"
        expect(f"{case.label}, back to IN PROGRESS", modality.set(again, uid), {PROCESSING_FAILURE},
               MAY_NO_LONGER_BE_UPDATED)
    elif case.label == "N-SET IN PROGRESS then COMPLETED":
        expect("N-CREATE", modality.create(creation(), uid), {SUCCESS})
        still = Dataset()
        still.PerformedProcedureStepStatus = "IN PROGRESS"
        still.CommentsOnThePerformedProcedureStep = "halfway"
        expect(case.label, modality.set(still, uid), {SUCCESS})
        expect("then COMPLETED", modality.set(ending(), uid), {SUCCESS})
    elif case.label == "N-CREATE with an invalid instance UID":
        expect(case.label, modality.create(creation(), "1.02.x"), {INVALID_INSTANCE})
    elif case.label == "N-SET not allowed":
        expect("N-CREATE", modality.create(creation(), uid), {SUCCESS})
        created = creation()
        for keyword, row in F_7_2_1.items():
            if row.set == NOT_ALLOWED and ">" not in keyword:
                change = ending()
                vr = dictionary_VR(keyword)
                change.add(copy.deepcopy(created[keyword]) if keyword in created
                           else DataElement(keyword, vr, [] if vr == "SQ" else ""))
                expect(f"N-SET {keyword}", modality.set(change, uid), {NO_SUCH_ATTRIBUTE})
        expect("then N-SET", modality.set(ending(), uid), {SUCCESS})
    else:
        expect(case.label, modality.create(case.dataset, uid), case.expected)
    if not modality.alive():
        problems.append("the association was aborted")
    return problems


@pytest.fixture
def modality(server):
    assert [a["code"] for a in send_all(server.mllp_port, ["orm_o01_nw_ihe.hl7"])] == ["AA"]
    peer = Modality(server.dicom_port)
    yield peer
    if peer.alive():
        peer.release()


def test_mpps_answers_every_mutation_as_the_standard_says(server, modality, caplog):
    caplog.set_level(logging.INFO)
    rng = random.Random(SEED)
    failures: list[str] = []
    for number, case in enumerate(cases(rng, INPUTS)):
        failures += [f"#{number} {case.label}: {problem}" for problem in run(modality, case)]
        if not modality.alive():
            break
    assert not failures, f"seed {SEED}:\n" + "\n".join(failures[:40])

    # the server keeps serving: a fresh association, an echo, and a proper procedure step
    fresh = Modality(server.dicom_port)
    assert fresh.implicit.send_c_echo().Status == SUCCESS
    uid = fresh.uid()
    assert fresh.create(creation(), uid).Status == SUCCESS and fresh.set(ending(), uid).Status == SUCCESS
    fresh.release()
    # an expected refusal is one log line, never a traceback
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, sorted({f"{r.name}: {r.getMessage()}" for r in tracebacks})
