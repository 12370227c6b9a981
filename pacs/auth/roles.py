"""Permissions, and the one table that says which role holds which.

A permission names a kind of data and what may be done with it (``orders.checkin``). Every HTTP
route declares the one it needs (:func:`pacs.auth.access.require`); a user holds the union of
their roles' permissions, an API client those its scopes name. A site changes the table in its
configuration (``[auth.roles]``, a role's whole list), e.g. to let technologists check patients
in::

    [auth.roles]
    technologist = ["patients.read", "orders.read", "orders.checkin", "worklist.read", "studies.read",
                    "images.write", "mpps.read", "reconcile"]

API clients are given scopes when their token is made (``pacs tokens create``): permission
names, or SMART on FHIR system scopes (``system/ServiceRequest.write``, ``system/*.read``;
SMART App Launch 2.0, scopes for requesting clinical data), which name the permission behind
each FHIR resource type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum


class Permission(StrEnum):
    PATIENTS_READ = "patients.read"
    PATIENTS_WRITE = "patients.write"
    ORDERS_READ = "orders.read"
    ORDERS_WRITE = "orders.write"  # book, change, cancel
    ORDERS_CHECKIN = "orders.checkin"
    WORKLIST_READ = "worklist.read"
    MPPS_READ = "mpps.read"
    STUDIES_READ = "studies.read"  # QIDO/WADO, ImagingStudy, the viewer
    IMAGES_WRITE = "images.write"  # STOW-RS, non-DICOM capture
    RECONCILE = "reconcile"
    REPORTS_READ = "reports.read"  # every report, drafts included
    REPORTS_READ_FINAL = "reports.read.final"  # final and corrected reports only
    REPORTS_WRITE = "reports.write"
    REPORTS_SIGN = "reports.sign"  # a resident's signature makes a preliminary report
    REPORTS_VERIFY = "reports.verify"  # an attending's: signs final, verifies a preliminary
    MESSAGES_READ = "messages.read"
    MESSAGES_REPROCESS = "messages.reprocess"
    MAPPINGS_READ = "mappings.read"
    MAPPINGS_WRITE = "mappings.write"
    OUTBOX_READ = "outbox.read"
    OUTBOX_RETRY = "outbox.retry"
    AUDIT_READ = "audit.read"
    USERS_ADMIN = "users.admin"
    SETTINGS_ADMIN = "settings.admin"
    STORAGE_ADMIN = "storage.admin"
    METRICS_READ = "metrics.read"


class Role(StrEnum):
    REGISTRAR = "registrar"  # 登记员
    TECHNOLOGIST = "technologist"  # 技师
    RADIOLOGIST = "radiologist"  # 诊断医生 (a resident: reports are preliminary until verified)
    ATTENDING = "attending"  # 主治医师/上级医师: a radiologist whose signature is final
    CLINICIAN = "clinician"  # 临床医生
    ANALYST = "analyst"  # interface analyst
    ADMIN = "admin"


P = Permission
ROLE_PERMISSIONS: Mapping[str, frozenset[Permission]] = {
    Role.REGISTRAR: frozenset({P.PATIENTS_READ, P.PATIENTS_WRITE, P.ORDERS_READ, P.ORDERS_WRITE, P.ORDERS_CHECKIN,
                               P.WORKLIST_READ}),
    Role.TECHNOLOGIST: frozenset({P.PATIENTS_READ, P.ORDERS_READ, P.WORKLIST_READ, P.MPPS_READ, P.STUDIES_READ,
                                  P.IMAGES_WRITE, P.RECONCILE}),
    # images.write: the viewer keeps a radiologist's measurements in the archive as DICOM SR (STOW-RS)
    Role.RADIOLOGIST: frozenset({P.PATIENTS_READ, P.ORDERS_READ, P.WORKLIST_READ, P.STUDIES_READ, P.IMAGES_WRITE,
                                 P.REPORTS_READ, P.REPORTS_READ_FINAL, P.REPORTS_WRITE, P.REPORTS_SIGN}),
    Role.ATTENDING: frozenset({P.PATIENTS_READ, P.ORDERS_READ, P.WORKLIST_READ, P.STUDIES_READ, P.IMAGES_WRITE,
                               P.REPORTS_READ, P.REPORTS_READ_FINAL, P.REPORTS_WRITE, P.REPORTS_SIGN,
                               P.REPORTS_VERIFY}),
    Role.CLINICIAN: frozenset({P.PATIENTS_READ, P.ORDERS_READ, P.STUDIES_READ, P.REPORTS_READ_FINAL}),
    Role.ANALYST: frozenset({P.MESSAGES_READ, P.MESSAGES_REPROCESS, P.MAPPINGS_READ, P.MAPPINGS_WRITE,
                             P.OUTBOX_READ, P.OUTBOX_RETRY, P.ORDERS_READ}),
    Role.ADMIN: frozenset(Permission),
}

# FHIR resource type → the noun of its permissions (Patient.read is patients.read)
FHIR_RESOURCES: Mapping[str, str] = {
    "Patient": "patients",
    "ServiceRequest": "orders",
    "ImagingStudy": "studies",
    "Endpoint": "studies",
    "DiagnosticReport": "reports",
}
SMART_SYSTEM = "system/"  # SMART system scopes: system/<resource>.<read|write|*>, and v2's .rs/.cud


def fhir_permission(resource_type: str, write: bool) -> Permission | None:
    """The permission a FHIR interaction on ``resource_type`` needs (None: no such type here)."""
    noun = FHIR_RESOURCES.get(resource_type)
    try:
        return Permission(f"{noun}.{'write' if write else 'read'}") if noun else None
    except ValueError:  # a type only read here (ImagingStudy: images come by DICOM and STOW-RS)
        return None


def role_table(overrides: Mapping[str, Iterable[str]] | None = None) -> dict[str, frozenset[Permission]]:
    """:data:`ROLE_PERMISSIONS` with a site's ``[auth.roles]`` in place of the roles it names;
    a name that is no permission is refused with the list of those there are."""
    table = {str(role): permissions for role, permissions in ROLE_PERMISSIONS.items()}
    for role, names in (overrides or {}).items():
        table[role] = frozenset(_permission(name, f"[auth.roles] {role}") for name in names)
    return table


def scope_permissions(scopes: Iterable[str]) -> frozenset[Permission]:
    """The permissions an API client's scopes grant: permission names, and SMART system scopes
    (``system/Patient.read``, ``system/*.read``, ``system/ServiceRequest.write``; v2's
    ``.rs``/``.cruds`` letters too). Unknown scopes are refused."""
    granted: set[Permission] = set()
    for scope in scopes:
        if not scope.startswith(SMART_SYSTEM):
            granted.add(_permission(scope, "scope"))
            continue
        resource, _, access = scope[len(SMART_SYSTEM):].partition(".")
        types = list(FHIR_RESOURCES) if resource == "*" else [resource]
        if resource != "*" and resource not in FHIR_RESOURCES:
            raise ValueError(f"scope {scope!r}: this server serves no FHIR {resource!r} "
                             f"(it serves {', '.join(FHIR_RESOURCES)})")
        read = access in ("read", "*") or (access and set(access) <= set("cruds") and ("r" in access or "s" in access))
        write = access in ("write", "*") or (access and set(access) <= set("cruds") and bool(set(access) & set("cud")))
        if not (read or write):
            raise ValueError(f"scope {scope!r}: say .read, .write or .* (or SMART v2 letters, e.g. .rs)")
        for name in types:
            for wanted, writing in ((read, False), (write, True)):
                permission = fhir_permission(name, write=writing) if wanted else None
                if permission is not None:
                    granted.add(permission)
                elif wanted and resource != "*" and access != "*":
                    raise ValueError(f"scope {scope!r}: {name} is read-only here")
    return frozenset(granted)


def _permission(name: str, where: str) -> Permission:
    try:
        return Permission(name)
    except ValueError:
        raise ValueError(f"{where}: {name!r} is no permission; there are "
                         f"{', '.join(p.value for p in Permission)}") from None
