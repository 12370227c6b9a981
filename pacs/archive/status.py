"""Named DIMSE status codes (PS3.7 Annex C, PS3.4 C.4.1.1.4, F.7.2, K.4.1.1.4)."""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    SUCCESS = 0x0000
    CANCEL = 0xFE00  # C-FIND/C-MOVE/C-GET matching terminated due to Cancel request
    PENDING = 0xFF00  # C-FIND: matches are continuing, current match supplied
    PENDING_WARNING = 0xFF01  # C-FIND: optional keys not supported

    # C-FIND failures (PS3.4 C.4.1.1.4, K.4.1.1.4)
    OUT_OF_RESOURCES = 0xA700
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000
    SOP_CLASS_NOT_SUPPORTED = 0x0122

    # N-CREATE / N-SET failures (PS3.7 C.4, PS3.4 F.7.2)
    NO_SUCH_ATTRIBUTE = 0x0105
    INVALID_ATTRIBUTE_VALUE = 0x0106
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_INSTANCE = 0x0112
    INVALID_OBJECT_INSTANCE = 0x0117  # a SOP Instance UID that violates the UID rules (PS3.7 C.5.12)
    MISSING_ATTRIBUTE = 0x0120
    MISSING_ATTRIBUTE_VALUE = 0x0121


class ErrorID(IntEnum):
    """Error ID (0000,0903) values PS3.4 F.7.2.2 names for MPPS."""

    MAY_NO_LONGER_BE_UPDATED = 0xA710  # Performed Procedure Step Object may no longer be updated
