"""The audit log, in the IHE ATNA vocabulary (DICOM PS3.15 A.5): who did what to which patient or
study, from where, when, with what outcome.

- :mod:`~pacs.audit.codes`: event IDs and type codes (PS3.16 CID 400, 401), roles, object types;
- :mod:`~pacs.audit.service`: ``record(session, event)`` in the caller's unit of work,
  :class:`Auditor` (a writer thread for everything else; start/stop, configuration and mapping
  changes), search, export and the retention purge;
- :mod:`~pacs.audit.dicom`, :mod:`~pacs.audit.http`, :mod:`~pacs.audit.messages`: the DICOM, HTTP
  and interface-engine entries;
- :mod:`~pacs.audit.message`: the DICOM audit message XML; :mod:`~pacs.audit.syslog`: RFC 5424
  forwarding; :mod:`~pacs.audit.api`: ``/api/audit``.

Example::

    from pacs.audit import Event, codes, record
    record(session, Event(codes.PATIENT_RECORD, "U", user="desk", user_kind="user", patients=["P1"]))
"""

from pacs.audit import codes
from pacs.audit.codes import Action, Outcome
from pacs.audit.service import Auditor, Event, record

__all__ = ["Action", "Auditor", "Event", "Outcome", "codes", "record"]
