"""Mappings: the analyst-owned files in mappings/ that turn a message into registry input.

The folder holds data only (see pacs/mappings/README.md):

- ``facilities.yaml``: per sender (MSH-4 facility, optionally MSH-3 application), which HL7
  field map applies, which PID-3 identifier is the patient ID, and the character set to assume
  when MSH-18 is empty;
- ``hl7v2/*.yaml``: field maps, rows of *target ← source* with conditions, defaults and code
  tables, in the spirit of the HL7 v2-to-FHIR mapping tables;
- ``fhir/*.yaml``: the same rows with FHIRPath sources for FHIR ServiceRequest intake;
- ``codes/*.csv``: code tables (``code,value,comment``) and ``procedures.csv``, which turns a
  requested procedure code into modality, station, duration and body part.

Every file is checked before use: :func:`load` returns the problems as ``file:line: what``, and
:class:`MappingHolder` refuses a broken set, keeps the last good one and says so in the log.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

from pacs.integration import hl7v2
from pacs.integration.ack import ErrorCode, MessageError
from pacs.integration.hl7v2 import Address, Message, Segment
from pacs.integration.names import NameRules, check_name_tables
from pacs.registry.schemas import (
    Action,
    IdentifierIn,
    Mapped,
    OrderAction,
    OrderIn,
    PatientIn,
    StepIn,
    VisitIn,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Targets: every registry field a mapping row may feed, with the kind of value it takes.
# --------------------------------------------------------------------------------------------

TEXT, CODE, DATE, DATETIME, INT = "text", "code", "date", "datetime", "int"
IDENTIFIERS, NAME, PINYIN, PERSON, CODED, ENTITY = (
    "identifiers", "name", "pinyin", "person", "coded", "entity",
)
COMPOSITE = {IDENTIFIERS, NAME, PINYIN, PERSON, CODED, ENTITY}


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    help: str
    parts: tuple[str, ...] = ()  # for CODED / ENTITY / NAME: the attributes filled


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("patient.identifiers", IDENTIFIERS, "every identifier (CX): value, authority, type"),
        Target("patient.name", NAME, "name as sent (XPN); Chinese often whole in PID-5.1",
               ("family_name", "given_name")),
        Target("patient.family_name", TEXT, "family name"),
        Target("patient.given_name", TEXT, "given name"),
        Target("patient.name_pinyin", PINYIN, "pinyin name if the sender gives one (XPN)"),
        Target("patient.sex", CODE, "administrative sex: M, F, O"),
        Target("patient.birth_date", DATE, "date of birth"),
        Target("patient.address", TEXT, "address"),
        Target("patient.phone", TEXT, "telephone"),
        Target("patient.national_id", TEXT, "national (resident ID card) number"),
        Target("merge.prior_identifiers", IDENTIFIERS, "identifiers of the patient merged away (MRG-1)"),
        Target("visit.visit_number", TEXT, "visit number / admission ID"),
        Target("visit.patient_class", CODE, "outpatient, emergency, inpatient, preadmit, other"),
        Target("visit.ward", TEXT, "point of care"),
        Target("visit.room", TEXT, "room"),
        Target("visit.bed", TEXT, "bed"),
        Target("visit.attending_doctor", PERSON, "attending doctor (XCN)"),
        Target("visit.admitted_at", DATETIME, "admit date/time"),
        Target("visit.discharged_at", DATETIME, "discharge date/time"),
        Target("order.control", CODE, "order control code; its table gives the action"),
        Target("order.placer", ENTITY, "placer order number (EI)", ("placer_number", "placer_authority")),
        Target("order.placer_number", TEXT, "placer order number"),
        Target("order.placer_authority", TEXT, "placer order number namespace"),
        Target("order.filler_number", TEXT, "filler order number"),
        Target("order.accession_number", TEXT, "accession number"),
        Target("order.requested_procedure_id", TEXT, "requested procedure ID"),
        Target("order.procedure", CODED, "requested procedure (CE/CWE)",
               ("procedure_code", "procedure_text", "procedure_scheme")),
        Target("order.procedure_code", CODE, "requested procedure code"),
        Target("order.procedure_text", TEXT, "requested procedure description"),
        Target("order.procedure_scheme", TEXT, "coding scheme of the procedure code"),
        Target("order.body_part", TEXT, "body part examined"),
        Target("order.reason", TEXT, "reason for the requested procedure"),
        Target("order.priority", CODE, "priority: stat, urgent, routine, ..."),
        Target("order.referring_physician", PERSON, "referring physician (XCN)"),
        Target("order.requesting_physician", PERSON, "requesting (ordering) physician (XCN)"),
        Target("order.department", TEXT, "requesting service / department"),
        Target("order.study_instance_uid", TEXT, "study instance UID when the sender assigns it"),
        Target("order.status", CODE, "order status (for SC)"),
        Target("step.sps_id", TEXT, "scheduled procedure step ID"),
        Target("step.modality", CODE, "modality: CT, MR, CR, DX, US, ..."),
        Target("step.station_ae_title", TEXT, "scheduled station AE title"),
        Target("step.station_name", TEXT, "scheduled station name"),
        Target("step.location", TEXT, "scheduled procedure step location"),
        Target("step.start", DATETIME, "scheduled start date/time"),
        Target("step.duration_minutes", INT, "scheduled duration in minutes"),
        Target("step.protocol", CODED, "scheduled protocol (CE/CWE)",
               ("protocol_code", "protocol_text", "protocol_scheme")),
        Target("step.protocol_code", TEXT, "protocol code"),
        Target("step.protocol_text", TEXT, "protocol meaning"),
        Target("step.description", TEXT, "scheduled procedure step description"),
        Target("step.performing_physician", PERSON, "scheduled performing physician (XCN)"),
    ]
}

HL7_NULL = '""'  # HL7 v2.5.1 §2.5.3: an explicit null that deletes the stored value


# --------------------------------------------------------------------------------------------
# YAML and CSV that remember line numbers and never guess types.
# --------------------------------------------------------------------------------------------


class LineDict(dict[str, Any]):
    line: int = 0


class LineList(list[Any]):
    line: int = 0


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Every scalar stays a string (so ``NO``, ``2.5`` and ``0100`` mean what they say). libyaml
    scans and parses where PyYAML was built with it (its wheels are), ten times faster than
    PyYAML's own scanner: the mappings load at every start and every reload."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    out = LineDict()
    for key_node, value_node in node.value:
        key = str(loader.construct_object(key_node, deep=True))
        out[key] = loader.construct_object(value_node, deep=True)
    out.line = node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    return out


def _construct_scalar(loader: _Loader, node: yaml.ScalarNode) -> str:
    return str(loader.construct_scalar(node))


_Loader.yaml_implicit_resolvers = {}
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG, _construct_scalar)


def read_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


def read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the rows (with their line numbers) of a CSV file; blank lines and lines
    starting with ``#`` are skipped."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        numbered = [(n, line) for n, line in enumerate(handle, 1)
                    if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        return [], []
    parsed = list(csv.reader(line for _, line in numbered))
    header = [h.strip() for h in parsed[0]]
    rows = []
    for (number, _), values in zip(numbered[1:], parsed[1:], strict=True):
        padded = [v.strip() for v in values] + [""] * (len(header) - len(values))
        rows.append((number, dict(zip(header, padded, strict=False))))
    return header, rows


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in {"true", "yes", "y", "1", "on"}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


class Problems(list[str]):
    def add(self, path: Path, line: int, what: str) -> None:
        self.append(f"{path}:{line}: {what}")


def read_mapping(path: Path, problems: Problems, shape: str, *, empty_ok: bool = True) -> dict[str, Any] | None:
    """What a YAML file of the mappings folder maps (``{}`` when it is empty, unless not
    ``empty_ok``); None, with the problem added to ``problems`` at its line, when the file can't
    be read, is not YAML, or holds something other than a mapping (``shape`` says what it should
    hold)."""
    try:
        data = read_yaml(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problems.add(path, (mark.line + 1) if mark else 1, f"not valid YAML: {getattr(exc, 'problem', exc)}")
        return None
    except OSError as exc:
        problems.add(path, 1, f"cannot read: {exc.strerror}")
        return None
    if data is None and empty_ok:
        data = {}
    if not isinstance(data, dict):
        problems.add(path, 1, shape)
        return None
    return data


# --------------------------------------------------------------------------------------------
# Code tables and the procedure table
# --------------------------------------------------------------------------------------------


@dataclass
class CodeTable:
    """``code → value`` with an optional ``*`` fallback; codes match without regard to case."""

    name: str
    values: dict[str, str]
    fallback: str | None = None

    def lookup(self, code: str) -> str | None:
        found = self.values.get(code.strip().upper())
        if found is not None:
            return found
        if self.fallback == "*":  # a "*,*" row keeps unknown codes as sent
            return code.strip()
        return self.fallback


@dataclass
class Procedure:
    code: str
    modality: str = ""
    station_ae_title: str = ""
    station_name: str = ""
    duration_minutes: int | None = None
    body_part: str = ""
    description: str = ""


def _load_code_table(path: Path, problems: Problems) -> CodeTable:
    table = CodeTable(path.stem, {})
    header, rows = read_csv(path)
    if header[:2] != ["code", "value"]:
        problems.add(path, 1, "header must be: code,value,comment")
        return table
    for line, row in rows:
        code, value = row["code"], row["value"]
        if not code:
            problems.add(path, line, "row has no code")
        elif code == "*":
            table.fallback = value
        elif code.upper() in table.values:
            problems.add(path, line, f"code {code!r} appears twice")
        else:
            table.values[code.upper()] = value
    return table


def _load_procedures(path: Path, problems: Problems) -> dict[str, Procedure]:
    procedures: dict[str, Procedure] = {}
    header, rows = read_csv(path)
    if "code" not in header or "modality" not in header:
        problems.add(path, 1, "header must name at least code and modality")
    for line, row in rows:
        code = row.get("code", "")
        if not code:
            problems.add(path, line, "row has no code")
            continue
        duration = row.get("duration_minutes", "")
        if duration and not duration.isdigit():
            problems.add(path, line, f"duration_minutes {duration!r} is not a whole number")
            duration = ""
        if code.upper() in procedures:
            problems.add(path, line, f"procedure {code!r} appears twice")
        procedures[code.upper()] = Procedure(
            code=code,
            modality=row.get("modality", "").upper(),
            station_ae_title=row.get("station_ae_title", ""),
            station_name=row.get("station_name", ""),
            duration_minutes=int(duration) if duration else None,
            body_part=row.get("body_part", "").upper(),
            description=row.get("description", ""),
        )
    return procedures


# --------------------------------------------------------------------------------------------
# Rules and profiles
# --------------------------------------------------------------------------------------------


@dataclass
class Rule:
    """One row of a field map: ``target ← first non-empty source``, if ``when`` holds."""

    target: Target
    sources: list[str]
    file: Path
    line: int
    required: bool = False
    default: str | None = None
    codes: str | None = None
    when: dict[str, list[str]] = field(default_factory=dict)
    where: dict[str, list[str]] = field(default_factory=dict)
    comment: str = ""
    addresses: list[Address] = field(default_factory=list)
    when_addresses: list[tuple[Address, list[str]]] = field(default_factory=list)

    @property
    def location(self) -> str:
        return f"{self.file.name}:{self.line}"


@dataclass
class Profile:
    """A field map: HL7 v2 (sources are field addresses) or FHIR (sources are FHIRPath)."""

    name: str
    path: Path
    kind: str  # "hl7v2" or "fhir"
    rules: dict[str, list[Rule]]
    order_group: str = "ORC"
    step_segment: str = ""
    events: dict[str, str] = field(default_factory=dict)
    _by_prefix: dict[str, list[tuple[str, Target, str, list[Rule]]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def rules_for(self, prefix: str) -> list[tuple[str, Target, str, list[Rule]]]:
        """(target name, target, attribute, rules) of every target under ``prefix`` ("patient."),
        in file order; worked out once per prefix."""
        found = self._by_prefix.get(prefix)
        if found is None:
            found = self._by_prefix[prefix] = [(name, TARGETS[name], name.split(".", 1)[1], rules)
                                               for name, rules in self.rules.items() if name.startswith(prefix)]
        return found


@dataclass
class Sender:
    facility: str = ""
    application: str = ""
    profile: str = ""
    patient_id_authority: list[str] = field(default_factory=list)
    patient_id_type: list[str] = field(default_factory=list)
    charset: str | None = None
    line: int = 0

    def matches(self, application: str, facility: str) -> bool:
        if self.facility and self.facility.upper() != facility.upper():
            return False
        if self.application and self.application.upper() != application.upper():
            return False
        return True


@dataclass
class Mappings:
    """One consistent, checked set of mapping files."""

    root: Path
    profiles: dict[str, Profile]
    senders: list[Sender]
    default_sender: Sender
    codes: dict[str, CodeTable]
    procedures: dict[str, Procedure]
    names: NameRules
    devices: Any = None  # pacs.registry.device_rules.DeviceRules: images from devices without a worklist
    rooms: Any = None  # pacs.registry.rooms.Rooms: what the desk books exams into
    preparations: Any = None  # pacs.registry.preparations.Preparations: printed on the patient's slip
    loaded_at: float = field(default_factory=time.time)

    def sender(self, application: str, facility: str) -> Sender:
        for sender in self.senders:
            if sender.matches(application, facility):
                return sender
        return self.default_sender

    def profile_for(self, application: str, facility: str) -> Profile:
        return self.profiles[self.sender(application, facility).profile]


def _parse_condition(raw: Any, path: Path, line: int, problems: Problems, what: str) -> dict[str, list[str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(path, line, f"{what} must be a mapping of field to value(s), e.g. {{PV1-2: E}}")
        return {}
    return {str(k): _as_list(v) for k, v in raw.items()}


def _load_profile(path: Path, root: Path, problems: Problems, kind: str, seen: tuple[Path, ...] = ()) -> Profile | None:
    if path in seen:
        problems.add(path, 1, "extends itself (directly or through another file)")
        return None
    data = read_mapping(path, problems, "a field map is a mapping with a 'fields' list", empty_ok=False)
    if data is None:
        return None
    rules: dict[str, list[Rule]] = {}
    order_group, step_segment, events = "ORC", "", {}
    if "extends" in data:
        parent = _load_profile((path.parent / str(data["extends"])).resolve(), root, problems, kind, seen + (path,))
        if parent is not None:
            rules = {k: list(v) for k, v in parent.rules.items()}
            order_group, step_segment, events = parent.order_group, parent.step_segment, dict(parent.events)
    order_group = str(data.get("order_group", order_group))
    step_segment = str(data.get("step_segment", step_segment))
    if "events" in data:
        if isinstance(data["events"], dict):
            events.update({str(k).upper(): str(v) for k, v in data["events"].items()})
        else:
            problems.add(path, getattr(data, "line", 1), "events must map message type^trigger to an action")
    for event, action in events.items():
        if action not in {a.value for a in Action} and action != "filter":
            problems.add(path, getattr(data.get("events"), "line", 1),
                         f"event {event}: unknown action {action!r}; one of "
                         + ", ".join(sorted([a.value for a in Action] + ["filter"])))
    rows = data.get("fields", [])
    if not isinstance(rows, list):
        problems.add(path, getattr(data, "line", 1), "'fields' must be a list of rows")
        rows = []
    replaced: set[str] = set()
    for row in rows:
        line = getattr(row, "line", 0)
        if not isinstance(row, dict):
            problems.add(path, line, "each row is a mapping with target and source")
            continue
        unknown = set(row) - {"target", "source", "required", "default", "codes", "when", "where",
                              "comment"}
        if unknown:
            problems.add(path, line, f"unknown key(s) {', '.join(sorted(unknown))}")
        target_name = str(row.get("target", ""))
        target = TARGETS.get(target_name)
        if target is None:
            close = [t for t in TARGETS if t.split(".")[-1] == target_name.split(".")[-1]]
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.add(path, line, f"unknown target {target_name!r}{hint}")
            continue
        sources = _as_list(row.get("source"))
        if not sources and row.get("default") is None:
            problems.add(path, line, f"{target_name}: give a source or a default")
        rule = Rule(
            target=target,
            sources=sources,
            file=path,
            line=line,
            required=_truthy(row.get("required", "false")),
            default=None if row.get("default") is None else str(row.get("default")),
            codes=None if row.get("codes") is None else str(row.get("codes")),
            when=_parse_condition(row.get("when"), path, line, problems, "when"),
            where=_parse_condition(row.get("where"), path, line, problems, "where"),
            comment=str(row.get("comment", "")),
        )
        if kind == "hl7v2":
            _compile_hl7_rule(rule, problems)
        else:
            _compile_fhir_rule(rule, problems)
        if target_name not in replaced:
            # A child file's rows for a target replace the parent's rows for it.
            rules[target_name] = []
            replaced.add(target_name)
        rules[target_name].append(rule)
    return Profile(
        name=str(path.relative_to(root)) if path.is_relative_to(root) else str(path),
        path=path,
        kind=kind,
        rules=rules,
        order_group=order_group,
        step_segment=step_segment,
        events=events,
    )


def _compile_hl7_rule(rule: Rule, problems: Problems) -> None:
    for source in rule.sources:
        try:
            address = Address.parse(source)
        except ValueError as exc:
            problems.add(rule.file, rule.line, str(exc))
            continue
        if rule.target.kind in COMPOSITE and (address.component or address.subcomponent):
            problems.add(rule.file, rule.line,
                         f"{rule.target.name} takes a whole field ({address.segment}-{address.field}); "
                         "map components to the part targets instead")
        problem = hl7_field_problem(address)
        if problem:
            problems.add(rule.file, rule.line, problem)
        rule.addresses.append(address)
    for text, values in rule.when.items():
        try:
            rule.when_addresses.append((Address.parse(text), values))
        except ValueError as exc:
            problems.add(rule.file, rule.line, f"when: {exc}")
    for key in rule.where:
        if not all(part.isdigit() and part != "0" for part in key.split(".")):
            problems.add(rule.file, rule.line,
                         f"where: {key!r} must be a component number such as 5 or 4.1")
    if rule.codes is None and rule.target.name == "order.control":
        rule.codes = "order_control"


def _compile_fhir_rule(rule: Rule, problems: Problems) -> None:
    import fhirpathpy

    if rule.where:
        problems.add(rule.file, rule.line, "where: is for HL7 fields; in FHIRPath write .where(...) in the source")
    expressions = list(rule.sources) + list(rule.when)
    for expression in expressions:
        resource = expression.split(".", 1)[0].split("(", 1)[0]
        try:
            # fhirpathpy compiles leniently; evaluating on an empty resource surfaces errors.
            fhirpathpy.evaluate({"resourceType": resource}, expression)
        except Exception as exc:  # fhirpathpy raises plain Exceptions
            problems.add(rule.file, rule.line, f"not a usable FHIRPath expression: {expression!r} ({exc})")


_FIELD_CACHE: dict[tuple[str, str], dict[int, tuple[str, str]]] = {}


def hl7_fields(segment: str, version: str = "2.5") -> dict[int, tuple[str, str]]:
    """``{field number: (data type, name)}`` for a standard segment, from hl7apy's tables."""
    key = (segment, version)
    if key not in _FIELD_CACHE:
        from hl7apy import load_reference
        from hl7apy.exceptions import ChildNotFound

        try:
            reference = load_reference(segment, "Segment", version)
        except (ChildNotFound, KeyError, ValueError):
            _FIELD_CACHE[key] = {}
        else:
            found: dict[int, tuple[str, str]] = {}
            for child_name, child, _cardinality, _kind in reference[1]:
                number = int(child_name.rsplit("_", 1)[1])
                found[number] = (child[2], str(child[3]).replace("_", " ").lower())
            _FIELD_CACHE[key] = found
    return _FIELD_CACHE[key]


def hl7_field_name(address: Address, version: str = "2.5") -> str:
    fields = hl7_fields(address.segment, version)
    if address.field in fields:
        datatype, name = fields[address.field]
        return f"{name} ({datatype})"
    return ""


def hl7_field_problem(address: Address) -> str | None:
    if address.segment.startswith("Z"):
        return None  # site-defined segments have no standard structure to check against
    fields = hl7_fields(address.segment, "2.5") or hl7_fields(address.segment, "2.3.1")
    if not fields:
        return f"{address.segment} is not an HL7 v2 segment (Z-segments are free)"
    if address.field not in fields:
        highest = max(fields)
        return f"{address.segment} has fields 1 to {highest}; {address} is not one of them"
    return None


def load(root: Path) -> tuple[Mappings | None, list[str]]:
    """Load and check every mapping file under ``root``. Returns (mappings, problems)."""
    root = root.resolve()
    problems = Problems()
    if not root.is_dir():
        problems.add(root, 0, "mappings folder does not exist")
        return None, problems

    codes: dict[str, CodeTable] = {}
    for path in sorted((root / "codes").glob("*.csv")):
        if path.stem == "procedures":
            continue
        codes[path.stem] = _load_code_table(path, problems)
    procedures_path = root / "codes" / "procedures.csv"
    procedures = _load_procedures(procedures_path, problems) if procedures_path.exists() else {}
    for needed in ("sex", "patient_class", "priority", "order_control", "order_status", "modality"):
        if needed not in codes:
            problems.add(root / "codes" / f"{needed}.csv", 0, "code table is missing")
    _check_vocabularies(root, codes, problems)

    profiles: dict[str, Profile] = {}
    for kind in ("hl7v2", "fhir"):
        for path in sorted((root / kind).glob("*.yaml")):
            profile = _load_profile(path.resolve(), root, problems, kind)
            if profile is not None:
                profiles[profile.name] = profile
    for profile in profiles.values():
        for rules in profile.rules.values():
            for rule in rules:
                if rule.codes and rule.codes not in codes:
                    problems.add(rule.file, rule.line, f"code table {rule.codes!r} not found in codes/")
        for event, action in profile.events.items():
            if "^" not in event:
                problems.add(profile.path, 1, f"event {event!r} must be written TYPE^TRIGGER, e.g. ADT^A01")

    senders, default = _load_facilities(root / "facilities.yaml", profiles, problems)
    names = NameRules.load(root)
    problems.extend(check_name_tables(root))
    from pacs.registry.device_rules import load_device_rules

    devices, device_problems = load_device_rules(root)
    problems.extend(device_problems)
    from pacs.registry.preparations import load_preparations
    from pacs.registry.rooms import load_rooms

    rooms, room_problems = load_rooms(root, procedures)
    problems.extend(room_problems)
    preparations, preparation_problems = load_preparations(root, procedures)
    problems.extend(preparation_problems)
    if "fhir/servicerequest.yaml" not in profiles:
        problems.add(root / "fhir" / "servicerequest.yaml", 0, "FHIR ServiceRequest field map is missing")
    if problems:
        # A file that others extend is read once per use; say each problem once.
        return None, list(dict.fromkeys(problems))
    return (
        Mappings(root=root, profiles=profiles, senders=senders, default_sender=default, codes=codes,
                 procedures=procedures, names=names, devices=devices, rooms=rooms, preparations=preparations),
        problems,
    )


def _vocabularies() -> dict[str, set[str]]:
    from pacs.registry.models import OrderStatus, PatientClass

    return {
        "sex": {"M", "F", "O"},
        "fhir_gender": {"M", "F", "O"},
        "patient_class": {c.value for c in PatientClass},
        "order_control": {a.value for a in OrderAction},
        "order_status": {s.value for s in OrderStatus},
        "identifier_types": {"card", "national_id"},  # what the desk's search calls them (pacs.registry.search)
    }


def _check_vocabularies(root: Path, codes: dict[str, CodeTable], problems: Problems) -> None:
    """Tables whose values the registry must understand may only use its words."""
    for name, allowed in _vocabularies().items():
        table = codes.get(name)
        if table is None:
            continue
        path = root / "codes" / f"{name}.csv"
        _header, rows = read_csv(path)
        for line, row in rows:
            value = row.get("value", "")
            if row.get("code") == "*" and value == "*":
                continue
            if value not in allowed:
                problems.add(path, line, f"value {value!r} must be one of {', '.join(sorted(allowed))}")


def _load_facilities(path: Path, profiles: dict[str, Profile], problems: Problems) -> tuple[list[Sender], Sender]:
    default = Sender(profile="hl7v2/ihe.yaml")
    if not path.exists():
        problems.add(path, 0, "facilities.yaml is missing")
        return [], default
    try:
        data = read_yaml(path) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problems.add(path, (mark.line + 1) if mark else 1, f"not valid YAML: {getattr(exc, 'problem', exc)}")
        return [], default

    def sender(entry: Any) -> Sender | None:
        line = getattr(entry, "line", 0)
        if not isinstance(entry, dict):
            problems.add(path, line, "each sender is a mapping (facility, application, profile, ...)")
            return None
        unknown = set(entry) - {"facility", "application", "profile", "patient_id", "charset", "comment"}
        if unknown:
            problems.add(path, line, f"unknown key(s) {', '.join(sorted(unknown))}")
        profile = str(entry.get("profile", default.profile))
        if profile not in profiles:
            problems.add(path, line, f"profile {profile!r} not found (known: {', '.join(sorted(profiles))})")
        rule = entry.get("patient_id") or {}
        if not isinstance(rule, dict):
            problems.add(path, line, "patient_id takes authority and/or type, e.g. {authority: HOSP}")
            rule = {}
        charset = entry.get("charset")
        if charset is not None:
            from pacs.integration.mllp import python_codec

            if python_codec(str(charset)) is None:
                problems.add(path, line, f"charset {charset!r} is not an HL7 table 0211 name")
        return Sender(
            facility=str(entry.get("facility", "")),
            application=str(entry.get("application", "")),
            profile=profile,
            patient_id_authority=_as_list(rule.get("authority")),
            patient_id_type=_as_list(rule.get("type")),
            charset=None if charset is None else str(charset),
            line=line,
        )

    if "default" in data:
        default = sender(data["default"]) or default
    senders = [s for s in (sender(e) for e in data.get("senders", []) or []) if s is not None]
    return senders, default


# --------------------------------------------------------------------------------------------
# Applying an HL7 v2 field map
# --------------------------------------------------------------------------------------------

# What each message type and trigger does; a field map's `events` may add to or override it.
DEFAULT_EVENTS: dict[str, str] = {
    **{f"ADT^{t}": Action.PATIENT_UPDATE.value for t in ("A01", "A04", "A05", "A08", "A28", "A31",
                                                          "A02", "A06", "A07")},
    "ADT^A40": Action.PATIENT_MERGE.value,
    "ADT^A47": Action.IDENTIFIER_CHANGE.value,
    "ADT^A03": Action.VISIT_DISCHARGE.value,
    "ADT^A11": Action.VISIT_CANCEL_ADMIT.value,
    "ADT^A13": Action.VISIT_CANCEL_DISCHARGE.value,
    "ORM^O01": Action.ORDERS.value,
    "OMI^O23": Action.ORDERS.value,
}
SUPPORTED_MESSAGE_CODES = {"ADT", "ORM", "OMI"}


class Scope:
    """Where a rule looks for its segments: step, then order group, then the whole message."""

    def __init__(self, *levels: Message | Segment | None) -> None:
        self.levels = [level for level in levels if level is not None]

    def segment(self, address: Address) -> Segment | None:
        for level in self.levels:
            if isinstance(level, Segment):
                if level.name == address.segment and address.occurrence == 1:
                    return level
                continue
            found = level.segment(address.segment, address.occurrence)
            if found is not None:
                return found
        return None


@dataclass
class Sourced:
    """A value and the address it came from (for error locations)."""

    value: Any
    address: Address | None


class BaseMapper:
    """What every field map does, whatever the source syntax: rows in order, the first value
    wins, composite targets fill their parts, missing required values are errors."""

    def __init__(self, mappings: Mappings, profile: Profile) -> None:
        self.mappings = mappings
        self.profile = profile
        self.sources: dict[str, Any] = {}  # target -> where its value came from

    def _holds(self, scope: Any, rule: Rule) -> bool:
        raise NotImplementedError

    def read(self, scope: Any, rule: Rule) -> Sourced:
        raise NotImplementedError

    def _coded(self, value: str, rule: Rule, address: Any) -> str:
        if not rule.codes:
            return value
        table = self.mappings.codes[rule.codes]
        found = table.lookup(value)
        if found is None:
            raise MessageError.content(
                ErrorCode.TABLE_VALUE_NOT_FOUND, address,
                f"code {value!r} is not in table {rule.codes} ({rule.location})",
            )
        return found

    def fill(self, scope: Any, prefix: str, out: dict[str, Any]) -> None:
        for name, target, attribute, rules in self.profile.rules_for(prefix):
            for rule in rules:
                if not self._holds(scope, rule):
                    continue
                got = self.read(scope, rule)
                if got.value is None:
                    if rule.required:
                        raise MessageError.content(
                            ErrorCode.REQUIRED_FIELD_MISSING, got.address,
                            f"required {name} is missing ({rule.location})",
                        )
                    continue
                self.sources[name] = got.address
                if target.kind in (CODED, ENTITY, NAME):
                    values = got.value if isinstance(got.value, tuple) else ("",) * len(target.parts)
                    for part, value in zip(target.parts, values, strict=False):
                        out.setdefault(part, value)
                        self.sources.setdefault(f"{prefix}{part}", got.address)
                else:
                    out.setdefault(attribute, got.value)
                break


class HL7Mapper(BaseMapper):
    """Applies one HL7 v2 field map to one message."""

    def __init__(self, mappings: Mappings, profile: Profile, sender: Sender) -> None:
        super().__init__(mappings, profile)
        self.sender = sender

    # -- reading values ---------------------------------------------------------------------
    def _holds(self, scope: Scope, rule: Rule) -> bool:
        for address, values in rule.when_addresses:
            segment = scope.segment(address)
            actual = "" if segment is None else segment.value(
                address.field, address.repetition or 1, address.component, address.subcomponent)
            wanted = {v.upper() for v in values}
            if actual.strip().upper() not in wanted:
                return False
        return True

    def _repetitions(self, segment: Segment, address: Address, rule: Rule) -> list[int]:
        count = len(segment.repetitions(address.field))
        indexes = [address.repetition] if address.repetition else list(range(1, count + 1))
        if rule.where:
            indexes = [i for i in indexes if self._where_matches(segment, address.field, i, rule.where)]
        return indexes

    @staticmethod
    def _where_matches(segment: Segment, field_no: int, repetition: int, where: dict[str, list[str]]) -> bool:
        for key, values in where.items():
            parts = [int(p) for p in key.split(".")]
            actual = segment.value(field_no, repetition, parts[0], parts[1] if len(parts) > 1 else None)
            if actual.strip().upper() not in {v.upper() for v in values}:
                return False
        return True

    def read(self, scope: Scope, rule: Rule) -> Sourced:
        """The first non-empty value the rule's sources give, converted for its target."""
        for address in rule.addresses:
            segment = scope.segment(address)
            if segment is None:
                continue
            repetitions = self._repetitions(segment, address, rule)
            if not repetitions:
                continue
            if rule.target.kind == IDENTIFIERS:
                values = [cx for i in repetitions if (cx := _cx(segment, address.field, i)) is not None]
                if values:
                    return Sourced(values, address)
                continue
            value = self._convert(segment, address, repetitions[0], rule)
            if value is not None:
                return Sourced(value, address)
        if rule.default is not None:
            return Sourced(self._coded(rule.default, rule, None), None)
        return Sourced(None, rule.addresses[0] if rule.addresses else None)

    def _convert(self, segment: Segment, address: Address, repetition: int, rule: Rule) -> Any:
        kind = rule.target.kind
        if kind in COMPOSITE:
            components = segment.components(address.field, repetition)
            if not any(c.strip() for c in components):
                return None
            if components[0] == HL7_NULL:
                return ""
            if kind == NAME:
                return _xpn(components)
            if kind == PINYIN:
                family, given = _xpn(components)
                return "^".join(p for p in (family.upper(), given.upper()) if p) if family else given.upper()
            if kind == PERSON:
                return _xcn(components, segment.encoding)
            if kind == CODED:
                code = components[0].split(segment.encoding.subcomponent)[0]
                return (self._coded(code, rule, address) if rule.codes else code,
                        components[1] if len(components) > 1 else "",
                        components[2] if len(components) > 2 else "")
            if kind == ENTITY:
                return (components[0], components[1] if len(components) > 1 else "")
        if address.component is None and address.subcomponent is None:
            # A whole composite field (an address, say) reads as its non-empty components.
            parts = [p.strip() for p in segment.components(address.field, repetition)]
            raw = " ".join(p for p in parts if p) if len(parts) > 1 else (parts[0] if parts else "")
        else:
            raw = segment.value(address.field, repetition, address.component, address.subcomponent).strip()
        if not raw:
            return None
        if raw == HL7_NULL:
            return ""
        if kind == DATE:
            return _hl7_date(raw, address)
        if kind == DATETIME:
            return _hl7_datetime(raw, address)
        if kind == INT:
            digits = raw.split(".")[0]
            if not (digits.isascii() and digits.isdigit()):
                raise MessageError.content(ErrorCode.DATA_TYPE_ERROR, address, f"{raw!r} is not a number")
            return int(digits)
        return self._coded(raw, rule, address)

    # -- the message ------------------------------------------------------------------------
    def map(self, message: Message) -> Mapped:
        event = message.message_type
        if "^" not in event:
            event = f"{message.message_code}^{message.trigger_event}"
        action = self.profile.events.get(event) or DEFAULT_EVENTS.get(event)
        if action is None or action == "filter":
            raise Filtered(f"{event} is not acted on by this PACS" if action is None
                           else f"{event} is filtered by {self.profile.name}")
        whole = Scope(message)
        patient: dict[str, Any] = {}
        self.fill(whole, "patient.", patient)
        merge: dict[str, Any] = {}
        self.fill(whole, "merge.", merge)
        visit: dict[str, Any] = {}
        self.fill(whole, "visit.", visit)
        orders: list[OrderIn] = []
        if action == Action.ORDERS:
            orders = self._orders(message)
        mapped = Mapped(
            event=event,
            action=Action(action),
            patient=PatientIn(**patient),
            prior_identifiers=merge.get("prior_identifiers", []),
            visit=VisitIn(**visit) if visit else None,
            orders=orders,
        )
        mapped.patient.patient_id = choose_patient_id(mapped.patient.identifiers, self.sender)
        if action == Action.PATIENT_MERGE and not mapped.prior_identifiers:
            raise MessageError.content(ErrorCode.REQUIRED_FIELD_MISSING, self.sources.get("merge.prior_identifiers")
                                       or Address("MRG", 1), "A40 needs the prior patient identifier in MRG-1")
        if mapped.patient.patient_id is None:
            raise MessageError.content(ErrorCode.REQUIRED_FIELD_MISSING,
                                       self.sources.get("patient.identifiers") or Address("PID", 3),
                                       "no patient identifier (PID-3)")
        return mapped

    def _orders(self, message: Message) -> list[OrderIn]:
        head, groups = message.groups(self.profile.order_group)
        if not groups:
            raise MessageError.content(ErrorCode.REQUIRED_FIELD_MISSING, Address(self.profile.order_group, 1),
                                       f"an order message needs at least one {self.profile.order_group} segment")
        orders: list[OrderIn] = []
        for group in groups:
            scope = Scope(group, head)
            values: dict[str, Any] = {}
            self.fill(scope, "order.", values)
            control = values.pop("control", "NW")
            code = group.segments[0].value(1).strip().upper() or "NW"
            try:
                action = OrderAction(control)
            except ValueError:
                raise MessageError.content(ErrorCode.TABLE_VALUE_NOT_FOUND, Address(self.profile.order_group, 1),
                                           f"order control {code!r} maps to {control!r}, not an order action") from None
            steps: list[StepIn] = []
            step_segments = group.all(self.profile.step_segment) if self.profile.step_segment else []
            for step_segment in step_segments or [None]:
                step: dict[str, Any] = {}
                self.fill(Scope(step_segment, group, head), "step.", step)
                steps.append(StepIn(**step))
            order = OrderIn(control=code, action=action, steps=steps, **values)
            self._enrich(order)
            orders.append(order)
        return orders

    def _enrich(self, order: OrderIn) -> None:
        """Fill what the sender left out from the procedure table (codes/procedures.csv)."""
        enrich(order, self.mappings, self.sources.get("order.procedure_code"))


def enrich(order: OrderIn, mappings: Mappings, code_address: Address | None) -> None:
    if order.action not in (OrderAction.NEW, OrderAction.CHANGE):
        return
    procedure = mappings.procedures.get((order.procedure_code or "").upper())
    if procedure is not None:
        if not order.procedure_text:
            order.procedure_text = procedure.description
        if not order.body_part:
            order.body_part = procedure.body_part
    for step in order.steps:
        if procedure is not None:
            step.modality = step.modality or procedure.modality
            step.station_ae_title = step.station_ae_title or procedure.station_ae_title
            step.station_name = step.station_name or procedure.station_name
            if step.duration_minutes is None:
                step.duration_minutes = procedure.duration_minutes
        if not step.modality:
            raise MessageError.content(
                ErrorCode.TABLE_VALUE_NOT_FOUND, code_address or Address("OBR", 4),
                f"procedure code {order.procedure_code!r} is not in codes/procedures.csv and the "
                "message names no modality",
            )
        if not step.description:
            step.description = order.procedure_text or ""


class Filtered(Exception):
    """The message is valid but this PACS does not act on it (status FILTERED, ACK AA)."""


def choose_patient_id(identifiers: list[IdentifierIn], sender: Sender) -> IdentifierIn | None:
    """The identifier the PACS presents as Patient ID, by the sender's rule (facilities.yaml)."""
    if not identifiers:
        return None
    candidates = identifiers
    if sender.patient_id_authority:
        wanted = {a.upper() for a in sender.patient_id_authority}
        candidates = [i for i in candidates if i.authority.upper() in wanted] or []
    if sender.patient_id_type:
        for type_code in sender.patient_id_type:
            for identifier in candidates:
                if identifier.type_code.upper() == type_code.upper():
                    return identifier
        return None if sender.patient_id_authority else (candidates[0] if candidates else None)
    return candidates[0] if candidates else None


def _cx(segment: Segment, field_no: int, repetition: int) -> IdentifierIn | None:
    components = segment.components(field_no, repetition)
    if not components or not components[0].strip():
        return None
    sub = segment.encoding.subcomponent
    authority = components[3].split(sub)[0] if len(components) > 3 else ""
    return IdentifierIn(
        value=components[0].strip(),
        authority=authority.strip(),
        type_code=(components[4] if len(components) > 4 else "").strip().upper(),
    )


def _xpn(components: list[str]) -> tuple[str, str]:
    family = components[0].split("&")[0].strip() if components else ""
    given = components[1].strip() if len(components) > 1 else ""
    middle = components[2].strip() if len(components) > 2 else ""
    if middle:
        given = f"{given} {middle}".strip()
    return family, given


def _xcn(components: list[str], encoding: hl7v2.Encoding) -> str:
    """XCN (ID^family^given^middle^suffix^prefix...) → PN ``family^given^middle^prefix^suffix``."""
    family = components[1].split(encoding.subcomponent)[0].strip() if len(components) > 1 else ""
    given = components[2].strip() if len(components) > 2 else ""
    if not family and not given:
        return components[0].strip() if components else ""
    parts = [family, given,
             components[3].strip() if len(components) > 3 else "",
             components[5].strip() if len(components) > 5 else "",
             components[4].strip() if len(components) > 4 else ""]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


def _hl7_date(raw: str, address: Address | None) -> date:
    digits = hl7v2.parse_ts(raw)
    try:
        if len(digits) >= 8:
            return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
        if len(digits) == 6:
            return date(int(digits[:4]), int(digits[4:6]), 1)
        if len(digits) == 4:
            return date(int(digits), 1, 1)
    except ValueError:
        pass
    raise MessageError.content(ErrorCode.DATA_TYPE_ERROR, address, f"{raw!r} is not a date (YYYYMMDD)")


def _hl7_datetime(raw: str, address: Address | None) -> datetime:
    digits = hl7v2.parse_ts(raw)
    if not (digits.isascii() and digits.isdigit()) or len(digits) < 8:
        raise MessageError.content(ErrorCode.DATA_TYPE_ERROR, address,
                                   f"{raw!r} is not a date/time (YYYYMMDD[HHMM[SS]])")
    padded = digits.ljust(14, "0")[:14]
    try:
        return datetime(int(padded[:4]), int(padded[4:6]), int(padded[6:8]),
                        int(padded[8:10]), int(padded[10:12]), int(padded[12:14]))
    except ValueError:
        raise MessageError.content(ErrorCode.DATA_TYPE_ERROR, address,
                                   f"{raw!r} is not a valid date/time") from None


def map_hl7(message: Message, mappings: Mappings) -> tuple[Mapped, dict[str, Address | None]]:
    """Map one parsed HL7 v2 message. Returns the result and, per target, the field it came from."""
    sender = mappings.sender(message.sending_application, message.sending_facility)
    mapper = HL7Mapper(mappings, mappings.profiles[sender.profile], sender)
    return mapper.map(message), mapper.sources


# --------------------------------------------------------------------------------------------
# Hot reload
# --------------------------------------------------------------------------------------------


class MappingHolder:
    """The mappings in force; reloads when a file changes and keeps the last good set."""

    def __init__(self, root: Path, *, poll_seconds: float = 2.0,
                 on_change: Callable[[Mappings], None] | None = None,
                 on_refused: Callable[[list[str]], None] | None = None) -> None:
        self.root = root
        self.poll_seconds = poll_seconds
        self.on_change = on_change
        self.on_refused = on_refused  # a changed set was refused (the last good one stays)
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp = self._fingerprint()
        mappings, problems = load(root)
        if mappings is None:
            raise MappingsInvalid(problems)
        self._current = mappings
        self.version = _version(self._stamp)
        self.loaded_at = datetime.now(UTC)
        self.last_problems: list[str] = []

    def _fingerprint(self) -> tuple[tuple[str, float, int], ...]:
        entries = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    info = os.stat(path)
                except FileNotFoundError:
                    continue
                entries.append((path, info.st_mtime, info.st_size))
        return tuple(sorted(entries))

    def current(self) -> Mappings:
        now = time.monotonic()
        if now - self._checked >= self.poll_seconds:
            self._checked = now
            self.reload_if_changed()
        return self._current

    def reload_if_changed(self) -> bool:
        with self._lock:
            stamp = self._fingerprint()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            mappings, problems = load(self.root)
            if mappings is None:
                self.last_problems = problems
                log.error("mappings in %s have %d problem(s); keeping the last good mappings:\n  %s",
                          self.root, len(problems), "\n  ".join(problems))
                if self.on_refused is not None:
                    self.on_refused(problems)
                return False
            self.last_problems = []
            self._current, self.version = mappings, _version(stamp)
            self.loaded_at = datetime.now(UTC)
            log.info("mappings reloaded from %s", self.root)
            if self.on_change is not None:
                self.on_change(mappings)
            return True


def _version(stamp: tuple[tuple[str, float, int], ...]) -> str:
    """What names a loaded set of mappings across processes: a digest of its files' paths,
    modification times and sizes (two processes that loaded the same files agree on it)."""
    return hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]


class MappingsInvalid(Exception):
    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("mappings have problems:\n  " + "\n  ".join(self.problems))
