"""The DICOM JSON Model (PS3.18 F.2): pydicom's encoding, with person names as F.2.2 wants them.

pydicom writes every component group of a PN value, empty ones too (``Wang^XiaoDong=王^小東=``
gives an empty ``Phonetic``); F.2.2 names only the groups a value has, so empty groups are left
out. Everything else (numbers for IS/DS/US, InlineBinary, BulkDataURI) is pydicom's.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset


def tidy(value: dict[str, Any]) -> dict[str, Any]:
    """Drop empty PN component groups, in place and in every nested item (PS3.18 F.2.2)."""
    for element in value.values():
        vr = element.get("vr")
        if vr == "PN":
            for name in element.get("Value", []):
                if isinstance(name, dict):
                    for group in [g for g, text in name.items() if not text]:
                        del name[group]
        elif vr == "SQ":
            for item in element.get("Value", []):
                if isinstance(item, dict):
                    tidy(item)
    return value


def element_json(element: DataElement, bulk_data_uri: str | None = None) -> dict[str, Any]:
    """One element: inline, or as a BulkDataURI when ``bulk_data_uri`` is given (F.2.6)."""
    if bulk_data_uri is not None and element.VR != "SQ":
        return {"vr": element.VR, "BulkDataURI": bulk_data_uri}
    # Nested bulk data stays inline: a URI can't name an element inside a sequence item here.
    return tidy({"x": element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 62)})["x"]


def dataset_json(ds: Dataset) -> dict[str, Any]:
    return tidy(ds.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=1 << 62))


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
