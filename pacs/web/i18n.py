"""Message catalogues: every text a page shows, by key, in zh-CN and en (``messages/*.json``).

The language of a page is the user's own (set in their account), else one the request asks for
(``?lang=``, the ``pacs_lang`` cookie), else the site's ``[auth] default_language``. A key
missing from a catalogue shows the other language's text, and the key itself as a last resort,
so a page never fails for a missing translation (``tests/web/test_login.py`` checks both
catalogues hold the same keys).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

LANGUAGES = ("zh-CN", "en")
CATALOGUES = Path(__file__).parent / "messages"
LANGUAGE_COOKIE = "pacs_lang"


@lru_cache(maxsize=len(LANGUAGES))
def catalogue(language: str) -> Mapping[str, str]:
    return json.loads((CATALOGUES / f"{language}.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def language_of(asked: str | None, default: str) -> str:
    """One of :data:`LANGUAGES`: ``asked`` if it names one (``zh``, ``en-US`` too), else ``default``."""
    if asked:
        lowered = asked.strip().lower()
        for language in LANGUAGES:
            if lowered == language.lower() or lowered.split("-")[0] == language.lower().split("-")[0]:
                return language
    return default


def translator(language: str):  # type: ignore[no-untyped-def]
    """``t(key, **values)`` for ``language``: the text with ``{name}`` places filled in."""
    primary = catalogue(language)
    other = catalogue(next(l for l in LANGUAGES if l != language))

    def t(key: str, **values: object) -> str:
        text = primary.get(key) or other.get(key) or key
        return text.format(**values) if values else text

    return t
