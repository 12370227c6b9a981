"""Patient (FHIR R4 patient.html): the registry's patients; read and search."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from pacs.db import row_id
from pacs.fhir_server.common import ADMINISTRATIVE_GENDER, _human_name, _meta, _type
from pacs.registry.models import Patient, PatientIdentifier


def patient_resource(session: Session, patient: Patient) -> dict[str, Any]:
    identifiers = session.exec(
        select(PatientIdentifier).where(PatientIdentifier.patient == patient.id)
        .order_by(col(PatientIdentifier.active).desc(), col(PatientIdentifier.id))
    ).all()
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(patient.id),
        "meta": _meta(patient),
        "identifier": [
            {
                **({"use": "usual"} if i.active else {"use": "old"}),
                **({"type": _type(i.type_code)} if i.type_code else {}),
                **({"system": i.authority} if i.authority else {}),
                "value": i.value,
            }
            for i in identifiers
        ],
        "active": patient.merged_into is None,
    }
    names = [n for n in (_human_name(patient.name_ideographic, "IDE"),
                         _human_name(patient.name_alphabetic, "ABC" if patient.name_ideographic else None)) if n]
    if names:
        resource["name"] = names
    if patient.sex:
        resource["gender"] = ADMINISTRATIVE_GENDER.get(patient.sex, "unknown")
    if patient.birth_date:
        resource["birthDate"] = patient.birth_date.isoformat()
    if patient.phone:
        resource["telecom"] = [{"system": "phone", "value": patient.phone}]
    if patient.address:
        resource["address"] = [{"text": patient.address}]
    if patient.merged_into is not None:
        resource["link"] = [{"other": {"reference": f"Patient/{patient.merged_into}"}, "type": "replaced-by"}]
    return resource



# -- search (patient.html#search) --------------------------------------------------------------


def search_parameters(systems):  # type: ignore[no-untyped-def]
    """``systems(system) -> [authorities]`` maps a FHIR identifier system to the assigning
    authorities HL7 v2 senders use (mappings/codes/identifier_systems.csv)."""
    from sqlalchemy import and_, func, or_

    from pacs.fhir_server.search import Param, SearchError, date_parameter, day, shown, string

    def identifier(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        if modifier is not None:
            raise SearchError(f"modifier :{modifier} is not supported for identifier")
        system, bar, code = value.rpartition("|")
        rows = select(PatientIdentifier.patient).where(PatientIdentifier.value == (code if bar else value))
        if bar and system:
            rows = rows.where(col(PatientIdentifier.authority).in_(systems(system)))
        return col(Patient.id).in_(rows)

    def gender(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        wanted = {"male": "M", "female": "F", "other": "O", "unknown": ""}.get(value.rpartition("|")[2])
        if wanted is None:
            raise SearchError(f"gender {shown(value)} is not male, female, other or unknown")
        return Patient.sex == wanted if wanted else or_(Patient.sex == "", col(Patient.sex).not_in(["M", "F", "O"]))

    def _id(value: str, modifier: str | None):  # type: ignore[no-untyped-def]
        return Patient.id == key if (key := row_id(value)) is not None else and_(Patient.id == -1)

    whole_name = func.replace(Patient.name_ideographic, "^", "")
    return {
        "_id": Param("_id", "token", _id),
        "identifier": Param("identifier", "token", identifier, "an identifier ([system|]value)"),
        "name": Param("name", "string", string(Patient.family_name, Patient.given_name, Patient.name_alphabetic,
                                               Patient.name_ideographic, whole_name),
                      "family, given, pinyin or the whole Chinese name"),
        "family": Param("family", "string", string(Patient.family_name)),
        "given": Param("given", "string", string(Patient.given_name)),
        "birthdate": Param("birthdate", "date", date_parameter(day, day, Patient.birth_date)),
        "gender": Param("gender", "token", gender),
    }


SORTABLE = {"_id": Patient.id, "birthdate": Patient.birth_date, "name": Patient.name_alphabetic,
            "family": Patient.family_name}
