"""Patient Demographics Query consumer: the desk's search asks the HIS when the registry finds no one.

Two transactions, whichever ``[his]`` names:

- **IHE PDQ, ITI-21** (IHE ITI TF-2a 3.21; HL7 v2.5 chapter 5, query by parameter): a QBP^Q22
  (``QBP_Q21`` structure) over MLLP to ``[his] pdq``, QPD-1 ``IHE PDQ Query``, QPD-2 a query tag
  of its own, QPD-3 the demographic fields asked for (``@PID.3.1^P10001``,
  ``@PID.5.1.1^张~@PID.5.2^三``), RCP-1 ``I`` (immediate) and RCP-2 the most records wanted.
  The answer is an RSP^K22 (``RSP_K21``): MSA-1 AA with QAK-2 OK (one PID per patient), NF (no
  one) or AE/AR (the supplier's error, HL7 table 0208), and an AE/AR in MSA-1 with its ERR;
  the message is built with hl7apy, the answer read with the engine's own parser.
- **IHE PDQm, ITI-78** (IHE ITI TF-2c 3.78, FHIR R4): ``GET [fhir_base_url]/Patient?identifier=``
  or ``?family=&given=`` (``name=`` for a whole name), ``_count`` the most wanted; the answer a
  searchset Bundle of Patients.

Each patient found becomes registry input (:class:`~pacs.registry.schemas.PatientIn`) through
the same mappings as the HIS's own messages: a PID as the PID of an ADT^A28 from that sender
(``facilities.yaml`` picks the field map by MSH-3/MSH-4 of the answer), a FHIR Patient through
``fhir/servicerequest.yaml``'s patient rows. The caller takes them into the registry.

A registrar waits for the answer: the whole exchange has ``[his] query_timeout_seconds``
(3 s by default), and whatever goes wrong is a :class:`HISUnavailable` whose text says what.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from hl7apy.core import Message as HL7Message

from pacs.integration import hl7v2, mllp
from pacs.integration.ack import MessageError, header_from_raw, next_control_id
from pacs.integration.hl7v2 import Segment, escape
from pacs.integration.mapping import Filtered, Mappings, map_hl7
from pacs.integration.names import NameRules
from pacs.registry.schemas import PatientIn
from pacs.settings import Settings

log = logging.getLogger(__name__)

PDQ = "ITI-21"  # IHE ITI TF-2a 3.21 Patient Demographics Query
PDQM = "ITI-78"  # IHE ITI TF-2c 3.78 Mobile Patient Demographics Query
PDQ_VERSION = "2.5"  # ITI TF-2a 3.21.4.1.2: QBP^Q22 is sent as HL7 v2.5
QUERY_NAME = "IHE PDQ Query"  # QPD-1, ITI TF-2a 3.21.4.1.2.1
QUERY_MESSAGE_TYPE = "QBP^Q22^QBP_Q21"  # MSH-9
RESPONSE_CODE, RESPONSE_EVENT = "RSP", "K22"
IMMEDIATE = "I"  # RCP-1 query priority (HL7 table 0091)
RECORDS = "RD"  # RCP-2.2 quantity units: records (HL7 table 0126)
ACCEPTED = ("AA", "CA")  # MSA-1 (HL7 table 0008)
DATA_FOUND, NO_DATA_FOUND = "OK", "NF"  # QAK-2 (HL7 table 0208); AE, AR: the supplier's errors
PATIENT_EVENT = "ADT^A28^ADT_A05"  # how a PID of the answer is read: as an A28 from the HIS would be
UTF8 = "UNICODE UTF-8"  # MSH-18 of the query (HL7 table 0211)
FHIR_JSON = "application/fhir+json"
MIN_NAME_CHARACTERS = 2  # a surname alone would ask the HIS for thousands of patients
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # what one answer may hold (a few hundred patients at most)


class HISUnavailable(Exception):
    """The HIS could not be asked or did not answer usably; the text says what, for the desk."""


@dataclass(frozen=True)
class Terms:
    """What to ask the HIS for: an identifier, or a name."""

    identifier: str = ""
    family: str = ""
    given: str = ""

    def qpd_fields(self, whole_name: bool) -> list[tuple[str, str]]:
        """QPD-3's demographic fields (ITI TF-2a 3.21.4.1.2.1): ``(@PID.x.y, value)`` pairs."""
        if self.identifier:
            return [("@PID.3.1", self.identifier)]
        if whole_name or not self.given:
            return [("@PID.5.1.1", self.family + self.given)]
        return [("@PID.5.1.1", self.family), ("@PID.5.2", self.given)]

    def fhir_parameters(self, whole_name: bool) -> dict[str, str]:
        """ITI-78's search parameters (IHE ITI TF-2c 3.78.4.1.2.1)."""
        if self.identifier:
            return {"identifier": self.identifier}
        if whole_name or not self.given:
            return {"name": self.family + self.given}
        return {"family": self.family, "given": self.given}


def terms_for(text: str, *, han: str, identifier: bool, names: NameRules) -> Terms | None:
    """What the HIS is asked for a desk query, or None when the HIS would not understand it:
    an identifier with a digit in it, as typed (a Patient ID, a card or national ID; a phone
    number is asked for as one too); a Han name of two characters or more, split at its surname
    (欧阳娜娜: 欧阳 + 娜娜). Pinyin and initials stay local: PDQ matches names as the HIS keeps
    them, in Hanzi."""
    if han:
        if len(han) < MIN_NAME_CHARACTERS:
            return None
        family, given = names.split_whole_name(han)
        return Terms(family=family, given=given)
    compact = "".join(text.split())
    if identifier and any(ch.isdigit() for ch in compact):
        return Terms(identifier=compact)
    return None


@dataclass
class Answer:
    """What the HIS answered."""

    transaction: str  # ITI-21 or ITI-78
    query_tag: str  # QPD-2 (a FHIR search's own tag, for the audit log)
    patients: list[PatientIn] = field(default_factory=list)
    source: str = ""  # the HIS as the registry names it: "HIS/HOSPITAL" (MSH-3/MSH-4) or the FHIR base


class PatientDemographics:
    """Asks the HIS named by ``[his] pdq`` (ITI-21) or ``[his] fhir_base_url`` (ITI-78)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.his = settings.his

    @property
    def configured(self) -> bool:
        return bool(self.his.pdq or self.his.fhir_base_url)

    def ask(self, terms: Terms, mappings: Mappings, *, limit: int) -> Answer:
        """The HIS's patients matching ``terms`` (at most ``limit``); :class:`HISUnavailable`
        when it cannot say within ``[his] query_timeout_seconds``."""
        if self.his.pdq:
            return self._ask_pdq(terms, mappings, limit)
        if self.his.fhir_base_url:
            return self._ask_pdqm(terms, mappings, limit)
        raise HISUnavailable("no HIS to ask: [his] names neither pdq nor fhir_base_url")

    # -- ITI-21 ---------------------------------------------------------------------------------
    def query_message(self, terms: Terms, *, limit: int, tag: str, control_id: str) -> str:
        """The QBP^Q22 (ITI TF-2a 3.21.4.1.2), built with hl7apy."""
        message = HL7Message("QBP_Q21", version=PDQ_VERSION)
        msh = message.msh
        msh.msh_3 = escape(self.settings.hl7.application)
        msh.msh_4 = escape(self.settings.hl7.facility)
        msh.msh_5 = escape(self.his.application)
        msh.msh_6 = escape(self.his.facility)
        msh.msh_7 = datetime.now().strftime("%Y%m%d%H%M%S")
        msh.msh_9 = QUERY_MESSAGE_TYPE
        msh.msh_10 = control_id
        msh.msh_11 = "P"
        msh.msh_18 = UTF8
        message.qpd.qpd_1 = QUERY_NAME
        message.qpd.qpd_2 = tag
        for name, value in terms.qpd_fields(self.his.pdq_name == "whole"):
            message.qpd.add_field("QPD_3").value = f"{name}^{escape(value)}"  # one repetition each
        message.rcp.rcp_1 = IMMEDIATE
        message.rcp.rcp_2 = f"{limit}^{RECORDS}"
        return str(message.to_er7())

    def _ask_pdq(self, terms: Terms, mappings: Mappings, limit: int) -> Answer:
        assert self.his.pdq is not None
        host, port = self.his.pdq.removeprefix("mllp://").rsplit(":", 1)
        tag = uuid.uuid4().hex[:16]
        control_id = next_control_id()
        payload = self.query_message(terms, limit=limit, tag=tag, control_id=control_id).encode("utf-8")
        raw = _exchange(host, int(port), payload, self.his.query_timeout_seconds)
        header = header_from_raw(raw)  # the character set to assume without MSH-18 is the sender's
        sender = mappings.sender(header.sending_application, header.sending_facility)
        try:
            text, _charset = mllp.decode(raw, sender.charset or self.settings.mllp.default_charset)
            answer = hl7v2.parse(text)
        except (mllp.CharsetError, hl7v2.HL7ParseError) as exc:
            raise HISUnavailable(f"the HIS's answer is not a readable HL7 message: {exc}") from None
        if (answer.message_code, answer.trigger_event) != (RESPONSE_CODE, RESPONSE_EVENT):
            raise HISUnavailable(f"the HIS answered {answer.message_type or 'without MSH-9'}, not RSP^K22")
        acknowledgment = answer.get("MSA-1").upper()
        if acknowledgment not in ACCEPTED:
            reason = answer.get("ERR-8") or answer.get("MSA-3") or answer.get("ERR-3.2") or "no reason given"
            raise HISUnavailable(f"the HIS refused the query ({acknowledgment or 'no MSA'}): {reason}")
        if answer.get("MSA-2") != control_id or answer.get("QAK-1") != tag:
            raise HISUnavailable("the HIS's answer is for another query (MSA-2 or QAK-1 does not match)")
        status = answer.get("QAK-2").upper()
        source = "/".join(p for p in (answer.sending_application, answer.sending_facility) if p) or self.his.pdq
        if status == NO_DATA_FOUND:
            return Answer(PDQ, tag, [], source)
        if status != DATA_FOUND:
            reason = answer.get("ERR-8") or answer.get("ERR-3.2") or "no reason given"
            raise HISUnavailable(f"the HIS could not answer the query (QAK-2 {status or 'empty'}): {reason}")
        patients = [p for p in (self._patient(answer, pid, mappings) for pid in answer.all("PID")) if p]
        return Answer(PDQ, tag, patients[:limit], source)

    @staticmethod
    def _patient(answer: hl7v2.Message, pid: Segment, mappings: Mappings) -> PatientIn | None:
        """A PID of the answer as the registry input an ADT^A28 with it would give."""
        fields = list(answer.msh.fields)
        fields += [""] * (10 - len(fields))
        fields[9] = PATIENT_EVENT
        header = Segment("MSH", fields, answer.encoding)
        try:
            mapped, _ = map_hl7(hl7v2.Message([header, pid], answer.encoding, ""), mappings)
        except (MessageError, Filtered) as exc:
            log.warning("PDQ: a PID the HIS sent was left out: %s", exc)
            return None
        return mapped.patient

    # -- ITI-78 ---------------------------------------------------------------------------------
    def _ask_pdqm(self, terms: Terms, mappings: Mappings, limit: int) -> Answer:
        from pacs.integration.fhir_intake import FHIR_PROFILE, FHIRMapper

        assert self.his.fhir_base_url is not None
        base = self.his.fhir_base_url.rstrip("/")
        tag = uuid.uuid4().hex[:16]
        parameters = {**terms.fhir_parameters(self.his.pdq_name == "whole"), "_count": str(limit)}
        try:
            response = httpx.get(f"{base}/Patient", params=parameters, headers={"Accept": FHIR_JSON},
                                 timeout=self.his.query_timeout_seconds)
        except httpx.TimeoutException:
            raise HISUnavailable(f"the HIS did not answer within {self.his.query_timeout_seconds:g} s "
                                 f"({base})") from None
        except httpx.HTTPError as exc:
            raise HISUnavailable(f"the HIS could not be reached ({base}): {exc}") from None
        if response.status_code != httpx.codes.OK:
            raise HISUnavailable(f"the HIS answered {response.status_code}: {_outcome_text(response)}")
        try:
            bundle = response.json()
        except ValueError:
            raise HISUnavailable("the HIS's answer is not JSON") from None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise HISUnavailable("the HIS's answer is not a FHIR Bundle")
        mapper = FHIRMapper(mappings, mappings.profiles[FHIR_PROFILE], self.settings.zone)
        patients = []
        for entry in bundle.get("entry") or []:
            resource = (entry or {}).get("resource") or {}
            if resource.get("resourceType") != "Patient" or ((entry.get("search") or {}).get("mode") == "include"):
                continue
            try:
                patients.append(mapper.map_patient(resource, None))
            except (MessageError, ValueError) as exc:
                log.warning("PDQm: a Patient the HIS sent was left out: %s", exc)
        return Answer(PDQM, tag, patients[:limit], base)


def _outcome_text(response: httpx.Response) -> str:
    try:
        issues = response.json().get("issue") or []
        return "; ".join(str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code"))
                         for i in issues) or response.reason_phrase
    except (ValueError, AttributeError):
        return response.reason_phrase


def _exchange(host: str, port: int, payload: bytes, timeout: float) -> bytes:
    """Send one framed message and read one framed answer (HL7 v2.5.1 Appendix C), all within
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    where = f"mllp://{host}:{port}"

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    try:
        with socket.create_connection((host, port), timeout=left()) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(left())
            sock.sendall(mllp.frame(payload))
            buffer = b""
            while mllp.TRAILER not in buffer:
                sock.settimeout(left())
                chunk = sock.recv(mllp.READ_CHUNK)
                if not chunk:
                    raise HISUnavailable(f"the HIS closed the connection without answering ({where})")
                buffer += chunk
                if len(buffer) > MAX_ANSWER_BYTES:
                    raise HISUnavailable(f"the HIS's answer passed {MAX_ANSWER_BYTES} bytes ({where})")
    except TimeoutError:
        raise HISUnavailable(f"the HIS did not answer within {timeout:g} s ({where})") from None
    except OSError as exc:
        raise HISUnavailable(f"the HIS could not be reached ({where}): {exc.strerror or exc}") from None
    start = buffer.find(mllp.START_BLOCK)
    return buffer[start + 1 if start >= 0 else 0: buffer.find(mllp.TRAILER)]


def describe(answer: Answer | None) -> dict[str, Any]:
    """The audit log's details of a question to the HIS."""
    if answer is None:
        return {}
    return {"transaction": answer.transaction, "query_tag": answer.query_tag, "his": answer.source,
            "found": len(answer.patients)}
