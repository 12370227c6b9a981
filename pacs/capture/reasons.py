"""Why a capture was refused or set aside, as a reason code with its values beside the English
text: the pages show ``capture.reason.<code>`` from the message catalogues in the reader's
language (zh-CN by default), the HTTP API gives the code, the values and the English text, and a
hot folder's ``NAME.reason.txt`` holds the site's language and English.

>>> error = Unconvertible("the file is empty", "empty")
>>> reason_text(error, translator("zh-CN"))                 # doctest: +SKIP
'文件是空的'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Coded(Exception):
    """An error with a reason code (``capture.reason.<code>`` in the catalogues) and the values
    its text is filled with; ``str()`` is the English text."""

    default_code = "failed"

    def __init__(self, text: str, code: str = "", **values: Any) -> None:
        super().__init__(text)
        self.code = code or self.default_code
        self.values = {name: str(value) for name, value in values.items()}

    def as_json(self) -> dict[str, Any]:
        """What the HTTP API answers: ``detail`` (English), ``code`` and ``values``."""
        return {"detail": str(self), "code": self.code, "values": self.values}


def reason_text(error: BaseException | str, t: Callable[..., str], code: str = "",
                values: dict[str, Any] | None = None) -> str:
    """``error``'s reason in the language of ``t`` (:func:`pacs.web.i18n.translator`): its code's
    catalogue text, or its English text when the catalogues have no such code."""
    if isinstance(error, Coded):
        code, values = error.code, error.values
    if code == "in_file" and values:  # one file's reason, named: "NAME: reason"
        inner = {k: v for k, v in values.items() if k not in ("file", "reason_code")}
        return t("capture.reason.in_file", file=values.get("file", "?"),
                 reason=reason_text(str(error).split(": ", 1)[-1], t, values.get("reason_code", ""), inner))
    key = f"capture.reason.{code}"
    if code:
        text = t(key, **(values or {})) if values else t(key)
        if text != key:
            return text
    return str(error)
