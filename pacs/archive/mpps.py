"""Modality Performed Procedure Step SCP (PS3.4 Annex F; IHE RAD-6 in progress, RAD-7 completed).

N-CREATE with status IN PROGRESS starts the scheduled steps it references; N-SET with COMPLETED
or DISCONTINUED ends them, recording the performed series. The order follows its steps through
the lifecycle (:mod:`pacs.registry.lifecycle`). An MPPS that references no known step (the
"unscheduled" case, IHE RAD TF-1 4.3) is kept, linked to no order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlmodel import Session, col, select

from pacs.archive.status import ErrorID, Status
from pacs.db import Database, utcnow
from pacs.registry import lifecycle
from pacs.registry.models import (
    ImagingOrder,
    OrderStatus,
    PerformedProcedureStep,
    PerformedStepStatus,
    ProcedureStep,
    StepStatus,
)

log = logging.getLogger(__name__)

FINAL = (PerformedStepStatus.COMPLETED, PerformedStepStatus.DISCONTINUED)
STEP_FOR = {
    PerformedStepStatus.IN_PROGRESS: StepStatus.STARTED,
    PerformedStepStatus.COMPLETED: StepStatus.COMPLETED,
    PerformedStepStatus.DISCONTINUED: StepStatus.DISCONTINUED,
}
ENDED_STEPS = (StepStatus.COMPLETED, StepStatus.DISCONTINUED, StepStatus.CANCELLED)
# N-CREATE: attributes PS3.4 Table F.7.2-1 requires (Type 1) of the SCU
REQUIRED_ON_CREATE = ("PerformedProcedureStepStatus", "ScheduledStepAttributesSequence",
                      "PerformedProcedureStepID", "PerformedStationAETitle",
                      "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "Modality")
# Attributes an N-SET may not change (PS3.4 Table F.7.2-1, "Not allowed" for N-SET)
NOT_SETTABLE = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "ScheduledStepAttributesSequence",
                "PerformedProcedureStepID", "PerformedStationAETitle", "PerformedProcedureStepStartDate",
                "PerformedProcedureStepStartTime", "Modality", "StudyID", "SOPInstanceUID")


@dataclass
class Result:
    """A DIMSE answer: status, and for failures the comment and offending attributes."""

    status: Status
    comment: str = ""
    error_id: ErrorID | None = None
    attributes: Dataset | None = None

    def status_dataset(self) -> Dataset | int:
        if self.status == Status.SUCCESS and not self.comment:
            return int(self.status)
        ds = Dataset()
        ds.Status = int(self.status)
        if self.comment:
            ds.ErrorComment = self.comment[:64]
        if self.error_id is not None:
            ds.ErrorID = int(self.error_id)
        return ds


def _dt(ds: Dataset, date_keyword: str, time_keyword: str) -> datetime | None:
    day = str(ds.get(date_keyword) or "").strip()
    clock = str(ds.get(time_keyword) or "").strip().split(".")[0].ljust(6, "0")
    if len(day) != 8:
        return None
    try:
        return datetime.strptime(day + clock[:6], "%Y%m%d%H%M%S")
    except ValueError:
        return None


def _series(ds: Dataset) -> list[dict[str, object]]:
    out = []
    for item in ds.get("PerformedSeriesSequence") or []:
        instances = [str(ref.get("ReferencedSOPInstanceUID", "")) for ref in item.get("ReferencedImageSequence") or []]
        instances += [str(ref.get("ReferencedSOPInstanceUID", ""))
                      for ref in item.get("ReferencedNonImageCompositeSOPInstanceSequence") or []]
        out.append({
            "series_instance_uid": str(item.get("SeriesInstanceUID", "")),
            "description": str(item.get("SeriesDescription", "")),
            "protocol": str(item.get("ProtocolName", "")),
            "retrieve_ae_title": str(item.get("RetrieveAETitle", "")),
            "instances": [uid for uid in instances if uid],
        })
    return out


class MPPSService:
    def __init__(self, db: Database, notify: lifecycle.Notify | None = None) -> None:
        self.db = db
        self.notify = notify

    def create(self, sop_instance_uid: str | None, attributes: Dataset, calling_ae: str) -> Result:
        """N-CREATE (PS3.4 F.7.2.1)."""
        for keyword in REQUIRED_ON_CREATE:
            if keyword not in attributes:
                return Result(Status.MISSING_ATTRIBUTE, f"{keyword} is required in N-CREATE")
        status = str(attributes.PerformedProcedureStepStatus or "").strip()
        if status != PerformedStepStatus.IN_PROGRESS:
            return Result(Status.INVALID_ATTRIBUTE_VALUE,
                          f"N-CREATE must have status IN PROGRESS, not {status or '(empty)'}")
        uid = sop_instance_uid or generate_uid()
        with self.db.session() as session:
            exists = session.exec(select(PerformedProcedureStep.id).where(
                PerformedProcedureStep.sop_instance_uid == uid)).first()
            if exists is not None:
                return Result(Status.DUPLICATE_SOP_INSTANCE, f"MPPS {uid} already exists")
            order, steps = self._scheduled(session, attributes)
            pps = PerformedProcedureStep(
                sop_instance_uid=uid,
                status=PerformedStepStatus.IN_PROGRESS,
                calling_ae_title=calling_ae,
                order=order.id if order else None,
                step_ids=[s.id for s in steps if s.id is not None],
                patient_id=str(attributes.get("PatientID", "")),
                modality=str(attributes.get("Modality", "")),
                station_ae_title=str(attributes.get("PerformedStationAETitle", "")),
                pps_id=str(attributes.get("PerformedProcedureStepID", "")),
                description=str(attributes.get("PerformedProcedureStepDescription", "")),
                started=_dt(attributes, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
                performed_series=_series(attributes),
                attributes=attributes.to_json_dict(),
            )
            session.add(pps)
            if order is None:
                log.warning("MPPS %s from %s references no scheduled step; kept as unscheduled", uid, calling_ae)
            else:
                self._follow(session, order, steps, PerformedStepStatus.IN_PROGRESS, calling_ae)
        reply = Dataset()
        if sop_instance_uid is None:
            reply.AffectedSOPInstanceUID = uid
        return Result(Status.SUCCESS, attributes=reply)

    def update(self, sop_instance_uid: str | None, modifications: Dataset, calling_ae: str) -> Result:
        """N-SET (PS3.4 F.7.2.2)."""
        if not sop_instance_uid:
            return Result(Status.NO_SUCH_SOP_INSTANCE, "N-SET needs the Requested SOP Instance UID")
        with self.db.session() as session:
            pps = session.exec(select(PerformedProcedureStep).where(
                PerformedProcedureStep.sop_instance_uid == sop_instance_uid)).first()
            if pps is None:
                return Result(Status.NO_SUCH_SOP_INSTANCE, f"no MPPS {sop_instance_uid}")
            if pps.status in FINAL:
                return Result(Status.PROCESSING_FAILURE, f"MPPS is {pps.status}; it may no longer be updated",
                              ErrorID.MAY_NO_LONGER_BE_UPDATED)
            for keyword in NOT_SETTABLE:
                if keyword in modifications:
                    return Result(Status.PROCESSING_FAILURE, f"{keyword} may not be changed by N-SET")
            new_status = str(modifications.get("PerformedProcedureStepStatus", pps.status) or "").strip()
            if new_status not in {s.value for s in PerformedStepStatus}:
                return Result(Status.INVALID_ATTRIBUTE_VALUE, f"status {new_status!r} is not a PPS status")
            stored = Dataset.from_json(pps.attributes)
            for element in modifications:
                stored[element.tag] = element
            pps.attributes = stored.to_json_dict()
            pps.status = new_status
            pps.description = str(stored.get("PerformedProcedureStepDescription", pps.description))
            pps.ended = _dt(stored, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime") or pps.ended
            pps.performed_series = _series(stored)
            pps.updated_at = utcnow()
            session.add(pps)
            if pps.order is not None:
                order = session.get_one(ImagingOrder, pps.order)
                steps = list(session.exec(select(ProcedureStep).where(col(ProcedureStep.id).in_(pps.step_ids))))
                self._follow(session, order, steps, PerformedStepStatus(new_status), calling_ae)
        return Result(Status.SUCCESS)

    # -- the registry -----------------------------------------------------------------------------
    def _scheduled(self, session: Session, attributes: Dataset) -> tuple[ImagingOrder | None, list[ProcedureStep]]:
        """The order and steps the Scheduled Step Attributes Sequence names (by study UID or
        accession number, then SPS ID)."""
        for item in attributes.get("ScheduledStepAttributesSequence") or []:
            study_uid = str(item.get("StudyInstanceUID", "")).strip()
            accession = str(item.get("AccessionNumber", "")).strip()
            sps_id = str(item.get("ScheduledProcedureStepID", "")).strip()
            order = None
            if study_uid:
                order = session.exec(select(ImagingOrder).where(ImagingOrder.study_instance_uid == study_uid)).first()
            if order is None and accession:
                order = session.exec(select(ImagingOrder).where(ImagingOrder.accession_number == accession)).first()
            if order is None:
                continue
            steps = list(session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)
                                      .order_by(col(ProcedureStep.id))))
            named = [s for s in steps if sps_id and s.sps_id == sps_id]
            return order, named or [s for s in steps if s.status not in ENDED_STEPS]
        return None, []

    def _follow(self, session: Session, order: ImagingOrder, steps: list[ProcedureStep],
                status: PerformedStepStatus, calling_ae: str) -> None:
        by = f"mpps:{calling_ae}"
        for step in steps:
            if step.status not in ENDED_STEPS:
                step.status = STEP_FOR[status]
                session.add(step)
        session.flush()
        every = list(session.exec(select(ProcedureStep).where(ProcedureStep.order == order.id)))
        if status == PerformedStepStatus.IN_PROGRESS:
            target = OrderStatus.IN_PROGRESS
        elif all(s.status in ENDED_STEPS for s in every):
            completed = any(s.status == StepStatus.COMPLETED for s in every)
            target = OrderStatus.COMPLETED if completed else OrderStatus.DISCONTINUED
        else:
            return  # other steps of the order are still to be done
        if order.status == target or not lifecycle.can_transition(order, target):
            if order.status != target:
                log.warning("order %s is %s; MPPS %s does not move it to %s", order.accession_number,
                            order.status, status, target)
            return
        lifecycle.transition(session, order, target, by=by, steps=every, note=f"MPPS {status}",
                             notify=self.notify)
