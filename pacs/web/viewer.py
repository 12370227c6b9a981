"""The diagnostic viewer at ``/viewer``: OHIF's released build on the archive's own DICOMweb.

OHIF (``@ohif/app`` from the npm registry, :data:`pacs.assets.OHIF_VIEWER`) is installed by
``pacs assets install``: its static build, relocated at install so that it loads its files from
:data:`STATIC_PATH` (its ``PUBLIC_URL``), and precompressed. It runs on the same origin as
``/dicomweb`` (PS3.18 10.4, 10.6): the session cookie carries the user's login to every QIDO-RS
and WADO-RS request, so the viewer needs no token of its own.

- ``GET /viewer`` (OHIF's study list) and every path below it that is one of OHIF's client-side
  routes (``/viewer/viewer?StudyInstanceUIDs=…`` opens a study) answer the page, for a user with
  :attr:`~pacs.auth.roles.Permission.STUDIES_READ` (radiologists, technologists, clinicians);
  someone not logged in goes to the login form and back. The page is OHIF's ``index.html`` with
  ``window.pacsViewer`` set first: the user's language, the labels of our catalogues, the
  window presets of the mappings (``window_presets.yaml``) and the session's CSRF token (which
  STOW-RS of the measurements' SR needs), which the project's own app
  configuration (``pacs/web/viewer/app-config.js``, a plain file of this repository) reads.
- ``/viewer/static/…`` serves the build's files and our configuration (:class:`~pacs.web.
  static_build.BuildFiles`): third-party code and configuration, no patient data, so no login.
- Opened through a consultation link (:mod:`pacs.auth.links`, ``/c/{token}``) the page is the
  same on the link's one study, without the study list, the film and share buttons or storing.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from pacs.assets import viewer_path
from pacs.auth.access import Principal
from pacs.auth.pages import page_language, render, require_page
from pacs.auth.roles import Permission
from pacs.web.i18n import catalogue
from pacs.web.static_build import BuildFiles, precompress, relocate
from pacs.web.window_presets import for_viewer, load_window_presets

PATH = "/viewer"  # OHIF's routerBasename: the study list here, a study at /viewer/viewer
STATIC_PATH = "/viewer/static"  # OHIF's PUBLIC_URL: where its files and our configuration are served
CONFIGURATION = Path(__file__).resolve().parent / "viewer"  # app-config.js and the customizations
PAGE = "index.html"
# The line of the bundler's runtime that names the build's public path ("/" in the released build).
RUNTIME_PUBLIC_PATH = '__webpack_require__.p = "/";'
DICOMWEB = "/dicomweb"
# OHIF's language codes for ours (its Chinese resources are "zh"; zh-CN falls back to them).
OHIF_LANGUAGES = {"zh-CN": "zh-CN", "en": "en-US"}
LABEL_PREFIX = "viewer."  # the catalogue entries the configuration shows (study list columns, overlay)

router = APIRouter(tags=["viewer"], include_in_schema=False)

ViewerUser = Annotated[Principal, Depends(require_page(Permission.STUDIES_READ))]


def prepare_build(folder: Path) -> None:
    """What ``pacs assets install`` does to OHIF's build once unpacked: relocate it under
    :data:`STATIC_PATH` and precompress its files."""
    relocate(folder, STATIC_PATH + "/", runtime_marker=RUNTIME_PUBLIC_PATH)
    precompress(folder)


def _folders(scope: dict[str, Any]) -> list[Path]:
    """Where ``/viewer/static/`` looks: our configuration first, then the installed build."""
    build = viewer_path(scope["app"].state.services.settings.assets_dir)
    return [CONFIGURATION] + ([build] if build is not None else [])


def static_files() -> BuildFiles:
    """The ASGI app mounted at :data:`STATIC_PATH` (before :data:`router`, whose catch-all route
    would otherwise answer its paths)."""
    return BuildFiles(_folders, hidden=frozenset({PAGE}))


def viewer_settings(request: Request, principal: Principal) -> dict[str, Any]:
    """``window.pacsViewer``: what the app configuration takes from this server."""
    services = request.app.state.services
    lang = page_language(request, principal)
    shared = principal.via == "link"  # a consultation link (pacs.auth.links): its one study, nothing else
    tools = {} if shared else {"film": "/film", "share": "/share" if principal.may(Permission.REPORTS_WRITE) else ""}
    presets, _problems = load_window_presets(services.settings.mappings_dir)  # `pacs mappings check` says why
    labels = {key[len(LABEL_PREFIX):]: text for key, text in catalogue(lang).items() if key.startswith(LABEL_PREFIX)}
    return {"language": OHIF_LANGUAGES.get(lang, lang), "dicomweb": DICOMWEB, "presets": for_viewer(presets),
            "labels": labels, "home": "/", "csrf": principal.csrf, "shared": shared, "tools": tools}


def _page(request: Request, principal: Principal) -> Response:
    build = viewer_path(request.app.state.services.settings.assets_dir)
    if build is None:
        return render(request, "viewer_missing.html", status=HTTPStatus.SERVICE_UNAVAILABLE, principal=principal)
    html = (build / PAGE).read_text(encoding="utf-8")
    data = json.dumps(viewer_settings(request, principal), ensure_ascii=False).replace("</", "<\\/")
    lang = page_language(request, principal)
    html = html.replace('<html lang="en">', f'<html lang="{lang}">', 1)
    html = html.replace("<head>", f"<head><script>window.pacsViewer={data}</script>", 1)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.get(PATH)
def viewer(request: Request, principal: ViewerUser) -> Response:
    """The viewer's study list: search by name (Hanzi or pinyin), ID, accession, date,
    modality; a study opens from it."""
    return _page(request, principal)


@router.get(PATH + "/{route:path}")
def viewer_route(route: str, request: Request, principal: ViewerUser) -> Response:
    """One of OHIF's client-side routes (``/viewer/viewer?StudyInstanceUIDs=…``): the same page,
    whose router shows what the path names."""
    return _page(request, principal)

