"""Device rules: images from devices without a worklist tied to the right order, and
devices.yaml checked with file:line problems."""

from __future__ import annotations

import itertools
import textwrap
import warnings
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from sqlmodel import Session, func, select

from pacs.db import Database
from pacs.registry.device_rules import (
    DeviceRules,
    ImageKeys,
    keys_from_dataset,
    load_device_rules,
    match_order,
)
from pacs.registry.models import (
    ImagingOrder,
    OrderStatus,
    Patient,
    PatientIdentifier,
    ProcedureStep,
    StepStatus,
)
from pacs.settings import SHIPPED_MAPPINGS

DAY = date(2024, 5, 6)


def at(hour: int, minute: int = 0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute)


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    db = Database(database_url)
    with Session(db.engine, expire_on_commit=False) as session:
        yield session
    db.dispose()


class Registry:
    """Registry rows built directly, committed so that matching sees what a new session would."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.numbers = itertools.count(1)

    def patient(self, value: str, authority: str = "HOSP", *, merged_into: Patient | None = None) -> Patient:
        patient = Patient(patient_id=value, issuer=authority, merged_into=merged_into.id if merged_into else None)
        self.session.add(patient)
        self.session.flush()
        assert patient.id is not None
        self.session.add(PatientIdentifier(patient=patient.id, value=value, authority=authority, type_code="PI"))
        self.session.commit()
        return patient

    def order(self, patient: Patient, *steps: ProcedureStep, accession: str | None = None,
              status: str = OrderStatus.SCHEDULED) -> ImagingOrder:
        number = next(self.numbers)
        assert patient.id is not None
        order = ImagingOrder(patient=patient.id, accession_number=accession or f"A{number:04d}",
                             study_instance_uid=f"1.2.826.0.1.3680043.10.999.{number}", status=status)
        self.session.add(order)
        self.session.flush()
        assert order.id is not None
        for step in steps:
            step.order = order.id
            self.session.add(step)
        self.session.commit()
        return order

    def step_of(self, order: ImagingOrder) -> ProcedureStep:
        [step] = self.session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)).all()
        return step


def step(modality: str = "DX", station: str = "DR1", start: datetime | None = None,
         status: str = StepStatus.SCHEDULED, station_name: str = "") -> ProcedureStep:
    """A step for :meth:`Registry.order`, which sets its order."""
    return ProcedureStep(  # type: ignore[call-arg]
        modality=modality, station_ae_title=station, station_name=station_name,
        start=start if start is not None else at(9), status=status)


@pytest.fixture
def registry(session: Session) -> Registry:
    return Registry(session)


def rules_from(tmp_path: Path, text: str) -> DeviceRules:
    (tmp_path / "devices.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    rules, problems = load_device_rules(tmp_path)
    assert problems == [] and rules is not None
    return rules


@pytest.fixture
def shipped() -> DeviceRules:
    rules, problems = load_device_rules(SHIPPED_MAPPINGS)
    assert problems == [] and rules is not None
    return rules


def dr(**keys: Any) -> ImageKeys:
    """Images from the shipped old DR (room DR1, no worklist, no accession number)."""
    return replace(ImageKeys(calling_ae="DR_OLD", modality="DX", acquired_at=at(9, 12)), **keys)


# --------------------------------------------------------------------------------------------
# The shipped file
# --------------------------------------------------------------------------------------------


def test_shipped_devices_yaml_loads_without_problems(shipped):
    by_ae = {next(iter(d.calling_ae)): d for d in shipped.devices}
    assert by_ae["DR_OLD"].room == "DR1" and by_ae["DR_OLD"].modality == {"DX"}
    assert by_ae["DR_OLD"].match[-1] == "room"
    assert by_ae["US_PORTABLE"].match == ("accession", "patient_id")
    assert shipped.default.match == ("accession", "study_uid")


# --------------------------------------------------------------------------------------------
# study_uid and accession
# --------------------------------------------------------------------------------------------


def test_study_uid(session, registry, tmp_path):
    rules = rules_from(tmp_path, "default: {match: [study_uid]}\n")
    patient = registry.patient("P1")
    order = registry.order(patient, step(modality="CT", station="CT1"))
    found = match_order(session, rules, ImageKeys(study_instance_uid=order.study_instance_uid, modality="CT"))
    assert (found.order_id, found.step_id, found.strategy) == (order.id, registry.step_of(order).id, "study_uid")
    assert found.patient == patient.id and found.matched

    missed = match_order(session, rules, ImageKeys(study_instance_uid="1.2.3.4"))
    assert not missed.matched and missed.strategy is None
    assert missed.reason == "no order found: study_uid: no order has Study Instance UID 1.2.3.4"
    assert "carry no Study Instance UID" in match_order(session, rules, ImageKeys()).reason


def test_accession_and_ambiguous_accession(session, registry, shipped):
    patient = registry.patient("P1")
    order = registry.order(patient, step(modality="CT", station="CT1"), accession="ACC1")
    found = match_order(session, shipped, ImageKeys(calling_ae="CT1", accession_number="ACC1", modality="CT"))
    assert (found.order_id, found.strategy) == (order.id, "accession")
    assert found.device.endswith("(default)")

    unknown = match_order(session, shipped, ImageKeys(accession_number="NOPE", study_instance_uid="1.2.3"))
    assert unknown.reason == ("no order found: accession: no order has accession number NOPE; "
                              "study_uid: no order has Study Instance UID 1.2.3")

    twin = registry.order(registry.patient("P2"), step(), accession="ACC1")
    ambiguous = match_order(session, shipped, ImageKeys(accession_number="ACC1"))
    assert not ambiguous.matched and ambiguous.candidates == (order.id, twin.id)
    assert "accession number ACC1 belongs to 2 orders" in ambiguous.reason
    assert "left for a person to reconcile" in ambiguous.reason


def test_cancelled_and_discontinued_orders_never_match(session, registry, shipped):
    patient = registry.patient("P1")
    cancelled = registry.order(patient, step(status=StepStatus.CANCELLED), accession="ACC1",
                               status=OrderStatus.CANCELLED)
    stopped = registry.order(patient, step(status=StepStatus.DISCONTINUED), accession="ACC2",
                             status=OrderStatus.DISCONTINUED)
    found = match_order(session, shipped, ImageKeys(accession_number="ACC1",
                                                    study_instance_uid=stopped.study_instance_uid))
    assert not found.matched
    assert f"accession number ACC1 is order {cancelled.id} (accession ACC1), which is cancelled" in found.reason
    assert "which is discontinued" in found.reason

    # The re-ordered exam with the same accession number is the one that matches.
    again = registry.order(patient, step(), accession="ACC1")
    assert match_order(session, shipped, ImageKeys(accession_number="ACC1")).order_id == again.id


def test_completed_order_still_takes_late_images_by_accession(session, registry, shipped):
    order = registry.order(registry.patient("P1"), step(status=StepStatus.COMPLETED), accession="ACC1",
                           status=OrderStatus.COMPLETED)
    assert match_order(session, shipped, ImageKeys(accession_number="ACC1")).order_id == order.id


def test_step_is_given_only_when_clear(session, registry, shipped):
    two = registry.order(registry.patient("P1"), step(modality="CT", station="CT1"),
                         step(modality="DX", station="DR1"), accession="ACC1")
    by_modality = match_order(session, shipped, ImageKeys(accession_number="ACC1", modality="DX"))
    dx = session.exec(select(ProcedureStep).where(ProcedureStep.order == two.id,
                                                  ProcedureStep.modality == "DX")).one()
    assert (by_modality.order_id, by_modality.step_id) == (two.id, dx.id)
    unclear = match_order(session, shipped, ImageKeys(accession_number="ACC1", modality="MR"))
    assert (unclear.order_id, unclear.step_id) == (two.id, None)


# --------------------------------------------------------------------------------------------
# patient_id
# --------------------------------------------------------------------------------------------


def us(**keys: Any) -> ImageKeys:
    """Images from the shipped portable ultrasound, with the patient ID typed on it."""
    return replace(ImageKeys(calling_ae="US_PORTABLE", modality="US", acquired_at=at(15, 40)), **keys)


def test_patient_id(session, registry, shipped):
    patient = registry.patient("1000234")
    order = registry.order(patient, step(modality="US", station="US1", start=at(8)))
    registry.order(patient, step(modality="CT", station="CT1", start=at(10)))  # another modality
    registry.order(patient, step(modality="US", station="US1", start=at(9, day=DAY - timedelta(days=1))))
    found = match_order(session, shipped, us(patient_id="1000234"))
    assert (found.order_id, found.step_id, found.strategy) == (order.id, registry.step_of(order).id, "patient_id")
    assert found.reason == (f"Patient ID 1000234 has one open US order on 2024-05-06: order {order.id} "
                            f"(accession {order.accession_number})")

    unknown = match_order(session, shipped, us(patient_id="999"))
    assert unknown.reason.endswith("patient_id: Patient ID 999 is not known")
    assert "carry no Patient ID" in match_order(session, shipped, us()).reason
    next_day = DAY + timedelta(days=1)
    tomorrow = match_order(session, shipped, us(patient_id="1000234", acquired_at=at(8, day=next_day)))
    assert not tomorrow.matched and "has no open US order on 2024-05-07" in tomorrow.reason
    assert tomorrow.patient == patient.id


def test_patient_id_with_two_open_orders_is_ambiguous(session, registry, shipped):
    patient = registry.patient("1000234")
    first = registry.order(patient, step(modality="US", station="US1", start=at(8)))
    second = registry.order(patient, step(modality="US", station="US1", start=at(16)),
                            status=OrderStatus.ARRIVED)
    found = match_order(session, shipped, us(patient_id="1000234"))
    assert not found.matched and found.candidates == (first.id, second.id)
    assert "has 2 open US orders on 2024-05-06" in found.reason and found.patient == patient.id


def test_patient_id_ignores_ended_and_done_orders(session, registry, shipped):
    patient = registry.patient("1000234")
    registry.order(patient, step(modality="US", start=at(8), status=StepStatus.CANCELLED),
                   status=OrderStatus.CANCELLED)
    registry.order(patient, step(modality="US", start=at(9), status=StepStatus.COMPLETED),
                   status=OrderStatus.COMPLETED)
    live = registry.order(patient, step(modality="US", start=at(10)), status=OrderStatus.IN_PROGRESS)
    assert match_order(session, shipped, us(patient_id="1000234")).order_id == live.id


def test_patient_id_of_a_merged_patient_finds_the_surviving_patients_order(session, registry, shipped):
    survivor = registry.patient("1000234")
    registry.patient("TEMP-77", merged_into=survivor)  # registered at the ward under a temporary ID
    order = registry.order(survivor, step(modality="US", start=at(14)))
    found = match_order(session, shipped, us(patient_id="TEMP-77"))
    assert (found.order_id, found.patient) == (order.id, survivor.id)


def test_patient_id_under_two_issuers(session, registry, tmp_path):
    hospital = registry.patient("555", "HOSP")
    clinic = registry.patient("555", "CLINIC")
    mine = registry.order(hospital, step(modality="US", start=at(14)))
    registry.order(clinic, step(modality="US", start=at(14)))
    rules = rules_from(tmp_path, """\
        devices:
          - {calling_ae: US_PORTABLE, match: [patient_id]}
          - {calling_ae: US_WARD3, match: [patient_id], patient_id_issuer: HOSP}
        """)
    either = match_order(session, rules, us(patient_id="555"))
    assert not either.matched and "belongs to 2 patients" in either.reason and "patient_id_issuer" in either.reason
    # The images' own issuer settles it when the registry knows the ID under it...
    assert match_order(session, rules, us(patient_id="555", issuer_of_patient_id="HOSP")).order_id == mine.id
    # ... and is ignored when it is the device's own invention.
    assert not match_order(session, rules, us(patient_id="555", issuer_of_patient_id="US-MACHINE")).matched
    # A device whose operators always type the hospital ID says so in its rules.
    assert match_order(session, rules, us(calling_ae="US_WARD3", patient_id="555")).order_id == mine.id


def test_patient_id_window_hours(session, registry, tmp_path):
    rules = rules_from(tmp_path, """\
        devices:
          - {calling_ae: US_PORTABLE, modality: US, match: [patient_id], patient_id_window_hours: 2}
        """)
    patient = registry.patient("1000234")
    late = registry.order(patient, step(modality="US", start=at(23, 30)))
    next_day = DAY + timedelta(days=1)
    assert match_order(session, rules, us(patient_id="1000234", acquired_at=at(1, 30, next_day))).order_id == late.id
    just_out = match_order(session, rules, us(patient_id="1000234", acquired_at=at(1, 31, next_day)))
    assert not just_out.matched and "within 2 h of 2024-05-07 01:31" in just_out.reason


# --------------------------------------------------------------------------------------------
# room
# --------------------------------------------------------------------------------------------


def test_room_prefers_the_step_in_progress_then_the_one_checked_in(session, registry, shipped):
    waiting = registry.order(registry.patient("P1"), step(start=at(9, 10), status=StepStatus.ARRIVED),
                             status=OrderStatus.ARRIVED)
    registry.order(registry.patient("P2"), step(start=at(9, 15)))  # scheduled right at that time
    registry.order(registry.patient("P3"), step(station="DR2", start=at(9, 12), status=StepStatus.STARTED),
                   status=OrderStatus.IN_PROGRESS)  # another room
    found = match_order(session, shipped, dr())
    assert (found.order_id, found.step_id, found.strategy) == (waiting.id, registry.step_of(waiting).id, "room")
    assert found.reason == f"room DR1: order {waiting.id} (accession {waiting.accession_number}) is checked in there"

    busy = registry.order(registry.patient("P4"), step(start=at(8, 50), status=StepStatus.STARTED),
                          status=OrderStatus.IN_PROGRESS)
    found = match_order(session, shipped, dr())
    assert (found.order_id, found.strategy) == (busy.id, "room")
    assert found.reason.endswith("is in progress there")


def test_room_reads_the_desk_status_recorded_on_the_order(session, registry, shipped):
    # An HL7 status change (SC, arrived) moves the order and leaves its step SCHEDULED.
    registry.order(registry.patient("P1"), step(start=at(9, 10)))
    checked_in = registry.order(registry.patient("P2"), step(start=at(11)), status=OrderStatus.ARRIVED)
    assert match_order(session, shipped, dr()).order_id == checked_in.id


def test_room_with_two_in_progress_is_left_to_a_person(session, registry, shipped):
    one = registry.order(registry.patient("P1"), step(start=at(9), status=StepStatus.STARTED),
                         status=OrderStatus.IN_PROGRESS)
    two = registry.order(registry.patient("P2"), step(start=at(9, 5), status=StepStatus.STARTED),
                         status=OrderStatus.IN_PROGRESS)
    registry.order(registry.patient("P3"), step(start=at(9, 10), status=StepStatus.ARRIVED),
                   status=OrderStatus.ARRIVED)
    found = match_order(session, shipped, dr())
    assert not found.matched and found.candidates == (one.id, two.id)
    assert "room DR1: 2 orders are in progress there" in found.reason
    # The device-wide reason lists every strategy tried, in order.
    assert found.reason.startswith("no order found: accession: the images carry no Accession Number; "
                                   "patient_id: the images carry no Patient ID; room: ")


def test_room_window_edges(session, registry, shipped):
    order = registry.order(registry.patient("P1"), step(start=at(9, 42)))
    found = match_order(session, shipped, dr())  # 09:12, exactly 30 minutes before
    assert (found.order_id, found.strategy) == (order.id, "room")
    assert "the one scheduled within 30 min of 09:12" in found.reason
    assert match_order(session, shipped, dr(acquired_at=at(10, 12))).order_id == order.id  # 30 min after
    early = match_order(session, shipped, dr(acquired_at=at(9, 11)))
    assert not early.matched
    assert f"(nearest: order {order.id} (accession {order.accession_number}) at 09:42)" in early.reason
    assert not match_order(session, shipped, dr(acquired_at=at(10, 13))).matched


def test_room_with_two_scheduled_in_the_window_is_ambiguous(session, registry, shipped):
    a = registry.order(registry.patient("P1"), step(start=at(9)))
    b = registry.order(registry.patient("P2"), step(start=at(9, 30)))
    c = registry.order(registry.patient("P3"), step(start=at(10, 30)))
    found = match_order(session, shipped, dr())
    assert not found.matched and found.candidates == (a.id, b.id)
    assert "2 orders are scheduled within 30 min of 09:12" in found.reason
    assert match_order(session, shipped, dr(acquired_at=at(10, 20))).order_id == c.id


def test_room_ignores_yesterdays_open_steps_and_ended_orders(session, registry, shipped):
    yesterday = DAY - timedelta(days=1)
    registry.order(registry.patient("P1"), step(start=at(9, day=yesterday), status=StepStatus.STARTED),
                   status=OrderStatus.IN_PROGRESS)  # never closed yesterday
    registry.order(registry.patient("P2"), step(start=at(9, 10), status=StepStatus.CANCELLED),
                   status=OrderStatus.CANCELLED)
    order = registry.order(registry.patient("P3"), step(start=at(9, 20)))
    assert match_order(session, shipped, dr()).order_id == order.id


def test_room_by_station_name_and_date_only_images(session, registry, tmp_path):
    rules = rules_from(tmp_path, """\
        devices:
          - {station_name: CR Room 1, match: [room], window_minutes: 10}
        """)
    registry.order(registry.patient("P1"),
                   step(modality="CR", station="CR1", station_name="CR Room 1", start=at(9)))
    started = registry.order(registry.patient("P2"), step(modality="CR", station="CR1", station_name="cr room 1",
                                                          start=at(8), status=StepStatus.STARTED),
                             status=OrderStatus.IN_PROGRESS)
    keys = ImageKeys(station_name="CR ROOM 1", modality="CR", acquired_at=DAY)
    assert match_order(session, rules, keys).order_id == started.id
    session.delete(registry.step_of(started))
    session.commit()
    date_only = match_order(session, rules, keys)
    assert not date_only.matched and "a date but no time" in date_only.reason


def test_images_without_a_date_use_the_time_they_arrived(session, registry, shipped):
    order = registry.order(registry.patient("P1"), step(start=at(14)))
    found = match_order(session, shipped, dr(acquired_at=None), now=at(14, 5))
    assert found.order_id == order.id
    missed = match_order(session, shipped, dr(acquired_at=None), now=at(16))
    assert "the images carry no date, so the time they arrived stood in" in missed.reason


# --------------------------------------------------------------------------------------------
# Which entry applies
# --------------------------------------------------------------------------------------------


def test_first_fitting_entry_wins_and_default_takes_the_rest(session, registry, tmp_path):
    rules = rules_from(tmp_path, """\
        default:
          match: [study_uid]
        devices:
          - calling_ae: [dr_old, DR_OLD2]
            modality: DX
            room: DR1
            match: [room]
          - calling_ae: DR_OLD
            match: [accession]
          - modality: [US, IVUS]
            match: [patient_id]
        """)
    patient = registry.patient("P1")
    order = registry.order(patient, step(start=at(9)), accession="ACC1")
    in_room = match_order(session, rules, dr(accession_number="ACC1", calling_ae="dr_old "))
    assert (in_room.strategy, in_room.device) == ("room", "devices.yaml:4 (DR_OLD, DR_OLD2)")
    cr_images = match_order(session, rules, dr(accession_number="ACC1", modality="CR"))
    assert (cr_images.strategy, cr_images.device) == ("accession", "devices.yaml:8 (DR_OLD)")
    other = match_order(session, rules, ImageKeys(calling_ae="CT9", accession_number="ACC1",
                                                  study_instance_uid=order.study_instance_uid))
    assert (other.order_id, other.strategy, other.device) == (order.id, "study_uid", "devices.yaml:2 (default)")
    by_modality = rules.device_for(ImageKeys(calling_ae="ANY", modality="us"))
    assert by_modality.match == ("patient_id",)


def test_without_default_the_built_in_default_applies(session, registry, tmp_path):
    rules = rules_from(tmp_path, "devices: []\n")
    order = registry.order(registry.patient("P1"), step(), accession="ACC1")
    found = match_order(session, rules, ImageKeys(accession_number="ACC1"))
    assert (found.order_id, found.strategy, found.device) == (order.id, "accession", "devices.yaml (default)")


def test_matching_writes_nothing(session, registry, shipped):
    registry.order(registry.patient("P1"), step(start=at(9, 5)))
    before = [session.exec(select(func.count()).select_from(m)).one()
              for m in (Patient, PatientIdentifier, ImagingOrder, ProcedureStep)]
    pending = Patient(patient_id="UNSAVED")
    session.add(pending)  # the caller's own unfinished work is not flushed by matching
    match_order(session, shipped, dr(patient_id="P1"))
    assert list(session.new) == [pending] and not session.dirty
    session.expunge(pending)
    after = [session.exec(select(func.count()).select_from(m)).one()
             for m in (Patient, PatientIdentifier, ImagingOrder, ProcedureStep)]
    assert before == after


# --------------------------------------------------------------------------------------------
# Reading the first image
# --------------------------------------------------------------------------------------------


def test_keys_from_dataset():
    ds = Dataset()
    ds.AccessionNumber = "ACC1 "
    ds.StudyInstanceUID = "1.2.3"
    ds.PatientID = "1000234"
    ds.IssuerOfPatientID = "HOSP"
    ds.Modality = "DX"
    ds.StationName = "DR ROOM 1"
    ds.StudyDate = "20240506"
    ds.StudyTime = "091205.123"
    assert keys_from_dataset(ds, " DR_OLD") == ImageKeys(
        calling_ae="DR_OLD", accession_number="ACC1", study_instance_uid="1.2.3", patient_id="1000234",
        issuer_of_patient_id="HOSP", modality="DX", station_name="DR ROOM 1",
        acquired_at=datetime(2024, 5, 6, 9, 12, 5, 123000))


@pytest.mark.parametrize("elements, expected", [
    ({"StudyDate": "20240506", "AcquisitionDateTime": "20240506091200+0800"}, datetime(2024, 5, 6, 9, 12)),
    ({"StudyDate": "20240506", "ContentDate": "20240506", "ContentTime": "0912"}, datetime(2024, 5, 6, 9, 12)),
    ({"AcquisitionDate": "2024.05.06", "AcquisitionTime": "09:12:00"}, datetime(2024, 5, 6, 9, 12)),
    ({"SeriesDate": "20240506", "SeriesTime": "09"}, datetime(2024, 5, 6, 9, 0)),
    ({"StudyDate": "20240506"}, date(2024, 5, 6)),
    ({"StudyDate": "20241306", "StudyTime": "091200", "ContentDate": "20240506"}, date(2024, 5, 6)),
    ({}, None),
])
def test_keys_from_dataset_finds_the_study_time(elements, expected):
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the ACR-NEMA and invalid values on purpose
        for keyword, value in elements.items():
            setattr(ds, keyword, value)
    assert keys_from_dataset(ds, "X").acquired_at == expected


# --------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------


def test_checker_reports_each_bad_entry_with_its_line(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(textwrap.dedent("""\
        default:
          calling_ae: ANY
          match: [accession, studyuid]
        devices:
          - calling_ae: DR_OLD
            room: DR1
            match: [room, room]
            window_minutes: half an hour
          - calling_ae: DR_OLD
            modality: DX
            match: [accession]
          - {calling_ae: US_PORTABLE, match: [patient_id], window_minute: 30}
          - {calling_ae: CR_OLD, match: [room]}
          - {modality: MG, match: []}
          - {match: [accession]}
          - {calling_ae: ABCDEFGHIJKLMNOPQ, match: accession, room: DR2}
          - {calling_ae: US2, match: [patient_id], patient_id_window_hours: 0}
        extra: 1
        """), encoding="utf-8")
    rules, problems = load_device_rules(tmp_path)
    assert rules is None
    assert problems == [f"{path}:{line}: {what}" for line, what in [
        (1, "unknown key(s) extra; the file holds default and devices"),
        (2, "default takes every device no entry matches; move calling_ae to an entry under devices"),
        (3, ("unknown strategy 'studyuid'; did you mean study_uid? strategies are accession, patient_id, "
            "room, study_uid")),
        (7, "strategy room is listed twice"),
        (5, "window_minutes 'half an hour' must be a whole number from 0 to 720"),
        (9, ("calling_ae DR_OLD is already taken by the entry at line 5, which gets every image this entry "
            "would: this entry is never used (remove it, or narrow the earlier one)")),
        (12, "unknown key 'window_minute' (did you mean window_minutes?)"),
        (13, ("match lists room but the entry names no room: give room (the Scheduled Station AE Title of "
             "its steps, e.g. DR1) or station_name")),
        (14, ("match: list the strategies to try in order, e.g. [accession, room] (one of accession, "
             "patient_id, room, study_uid)")),
        (15, ("give calling_ae, station_name or modality: an entry without any would take every device "
             "(that is what default is for)")),
        (16, "calling_ae 'ABCDEFGHIJKLMNOPQ' is longer than an AE title can be (16 characters)"),
        (16, "room is read only by the room strategy, which match does not list"),
        (17, "patient_id_window_hours '0' must be a whole number from 1 to 168"),
    ]]


def test_checker_reports_yaml_errors_and_a_missing_file(tmp_path):
    rules, problems = load_device_rules(tmp_path)
    assert rules is None and problems[0].startswith(f"{tmp_path / 'devices.yaml'}:0: devices.yaml is missing")
    (tmp_path / "devices.yaml").write_text("devices:\n  - {calling_ae: DR_OLD, match: [room}\n", encoding="utf-8")
    rules, problems = load_device_rules(tmp_path)
    assert rules is None and problems[0].startswith(f"{tmp_path / 'devices.yaml'}:2: not valid YAML")
    (tmp_path / "devices.yaml").write_text("devices:\n  calling_ae: DR_OLD\n", encoding="utf-8")
    assert load_device_rules(tmp_path)[1] == [
        f"{tmp_path / 'devices.yaml'}:2: devices must be a list of entries, each starting with `- `"]
