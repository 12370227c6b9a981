"""/dicomweb: QIDO-RS, WADO-RS and STOW-RS (PS3.18 10.6, 10.4, 10.5). Thin handlers over
:mod:`~pacs.archive.dicomweb.qido`, :mod:`~pacs.archive.dicomweb.wado`,
:mod:`~pacs.archive.dicomweb.render` and :mod:`~pacs.archive.dicomweb.stow`.

Errors are JSON objects ``{"status": 400, "message": "..."}``: 400 for a bad parameter, 404 for
a UID the archive does not hold, 406 for an Accept header nothing here satisfies, 415 for a
STOW-RS body that is not multipart/related of application/dicom.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from sqlalchemy import Connection

from pacs.archive.dicomweb import cache, qido, render, wado
from pacs.archive.dicomweb.cache import MetadataCache
from pacs.archive.dicomweb.dicomjson import dumps
from pacs.archive.dicomweb.media import (
    DICOM,
    DICOM_JSON,
    DicomwebError,
    MediaRange,
    MultipartReader,
    accept,
    in_batches,
    multipart_response,
    negotiate,
    require_json,
    single_part_response,
)
from pacs.archive.dicomweb.stow import Stow, boundary_of
from pacs.archive.store import incoming_dir
from pacs.auth.access import require_by_method
from pacs.auth.roles import Permission
from pacs.http import ReaderDep, ServicesDep, SessionDep
from pacs.server import Services

PREFIX = "/dicomweb"


class DicomwebRoute(APIRoute):
    """Answers :class:`DicomwebError` with its status and JSON body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except DicomwebError as exc:
                return exc.response()

        return route


router = APIRouter(prefix=PREFIX, tags=["dicomweb"], route_class=DicomwebRoute, dependencies=[
    Depends(require_by_method({"GET": Permission.STUDIES_READ, "HEAD": Permission.STUDIES_READ,
                               "POST": Permission.IMAGES_WRITE}))])


def error_response(request: Request, status: int, reason: str, headers: Mapping[str, str] | None = None) -> Response:
    """An error no route answered itself (no resource at the path, a method it doesn't serve), in
    the JSON every DICOMweb error here has."""
    return DicomwebError(status, reason).response(headers)


def base_url(request: Request) -> str:
    """The absolute /dicomweb URL that RetrieveURL and BulkDataURI values start with.

    The configured ``public_url`` when there is one; else the request's Host (or a proxy's
    X-Forwarded-Host and -Proto). A Host without a port on a direct connection gets the port the
    request arrived on: some clients (dicomweb-client, for one) send ``Host: 127.0.0.1`` to a
    server on port 8080.
    """
    public = getattr(request.app.state.services.settings, "public_url", None)
    if public:
        return str(public).rstrip("/") + PREFIX
    url = request.base_url
    headers = request.headers
    forwarded_host = headers.get("x-forwarded-host", "").split(",")[0].strip()
    if forwarded_host:
        scheme = headers.get("x-forwarded-proto", url.scheme).split(",")[0].strip() or url.scheme
        url = url.replace(scheme=scheme, netloc=forwarded_host)
    elif not any(h in headers for h in ("forwarded", "x-forwarded-for", "x-forwarded-proto")):
        host = headers.get("host", "")
        server = request.scope.get("server")
        if host and ":" not in host.rpartition("]")[2] and server and server[1] not in (80, 443):
            url = url.replace(netloc=f"{host}:{server[1]}")
    return str(url).rstrip("/") + PREFIX


def _metadata_cache(services: Services) -> MetadataCache:
    return MetadataCache(cache.folder(services.settings.data_dir))


def _areas(services: Services) -> dict[str, Any]:
    """The areas copies are read from (online ones; reading a study elsewhere recalls it)."""
    return services.archive.readable


def _warning_header(warnings: list[str]) -> dict[str, str]:
    """``Warning: 299 pacs "..."`` (RFC 7234 5.5, used by PS3.18 10.6.3 and 10.5.3)."""
    if not warnings:
        return {}
    # A header value is Latin-1 without control characters (RFC 9110 5.5); a warning may quote
    # a value from a damaged object (a UID with NUL bytes in it).
    texts = [_CONTROL.sub("?", w.replace('"', "'")).encode("latin-1", "replace").decode("latin-1")
             for w in warnings[:20]]
    return {"Warning": ", ".join(f'299 pacs "{t}"' for t in texts)}


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# -- QIDO-RS (PS3.18 10.6) ---------------------------------------------------------------------

def _search(request: Request, services: Services, reader: Connection, resource: str, *, study: str | None = None,
            series: str | None = None) -> Response:
    require_json(request.headers.get("accept"))
    query = qido.parse(list(request.query_params.multi_items()), resource, study=study, series=series)
    result = qido.search(reader, query, names=services.mappings.current().names, base_url=base_url(request),
                         study=study, series=series)
    return Response(dumps(result.items), media_type=DICOM_JSON, headers=_warning_header(result.warnings))


@router.get("/studies", summary="Search for studies (QIDO-RS)")
def search_studies(request: Request, services: ServicesDep, reader: ReaderDep) -> Response:
    """PS3.18 10.6.1: ``PatientName=ZHANG*``, ``StudyDate=20260101-20261231``, ``includefield``,
    ``limit``, ``offset``; an empty match is ``[]``."""
    return _search(request, services, reader, "studies")


@router.get("/series", summary="Search for series (QIDO-RS)")
def search_all_series(request: Request, services: ServicesDep, reader: ReaderDep) -> Response:
    return _search(request, services, reader, "series")


@router.get("/studies/{study}/series", summary="Search for a study's series (QIDO-RS)")
def search_series(study: str, request: Request, services: ServicesDep, reader: ReaderDep) -> Response:
    return _search(request, services, reader, "series", study=study)


@router.get("/instances", summary="Search for instances (QIDO-RS)")
def search_all_instances(request: Request, services: ServicesDep, reader: ReaderDep) -> Response:
    return _search(request, services, reader, "instances")


@router.get("/studies/{study}/instances", summary="Search for a study's instances (QIDO-RS)")
def search_study_instances(study: str, request: Request, services: ServicesDep, reader: ReaderDep) -> Response:
    return _search(request, services, reader, "instances", study=study)


@router.get("/studies/{study}/series/{series}/instances", summary="Search for a series' instances (QIDO-RS)")
def search_instances(study: str, series: str, request: Request, services: ServicesDep,
                     reader: ReaderDep) -> Response:
    return _search(request, services, reader, "instances", study=study, series=series)


# -- WADO-RS: DICOM and metadata (PS3.18 10.4.1.1.1, 10.4.1.1.2) -------------------------------

def _retrieve(request: Request, services: Services, session: Any, *, study: str, series: str | None = None,
              instance: str | None = None) -> Response:
    wanted = wado.dicom_accept(accept(request.headers.get("accept")), single_allowed=instance is not None)
    items = wado.locate(session, _areas(services), study=study, series=series, instance=instance)
    service = wado.Wado(services.db, _areas(services), base_url(request))
    syntaxes = service.check_syntaxes(items, wanted)
    if len(items) == 1:  # prepared before the response begins, so a failure is still a status
        part = service.dicom_part(items[0], syntaxes[0])
        if wanted.single_part:
            return single_part_response(part)
        return multipart_response([part], DICOM)
    return multipart_response(service.dicom_parts(items, syntaxes), DICOM)


def _metadata(request: Request, services: Services, session: Any, *, study: str, series: str | None = None,
              instance: str | None = None) -> Response:
    require_json(request.headers.get("accept"))
    items = wado.locate(session, _areas(services), study=study, series=series, instance=instance)
    service = wado.Wado(services.db, _areas(services), base_url(request), _metadata_cache(services),
                        names=services.mappings.current().names)
    return StreamingResponse(in_batches(service.metadata_chunks(items)), media_type=DICOM_JSON)


@router.get("/studies/{study}", summary="Retrieve a study (WADO-RS)")
def retrieve_study(study: str, request: Request, services: ServicesDep, session: SessionDep) -> Response:
    """``multipart/related; type="application/dicom"``, streamed instance by instance;
    ``transfer-syntax=*`` in Accept sends each as stored, otherwise Explicit VR Little Endian."""
    return _retrieve(request, services, session, study=study)


@router.get("/studies/{study}/metadata", summary="Retrieve a study's metadata (WADO-RS)")
def study_metadata(study: str, request: Request, services: ServicesDep, session: SessionDep) -> Response:
    return _metadata(request, services, session, study=study)


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series (WADO-RS)")
def retrieve_series(study: str, series: str, request: Request, services: ServicesDep,
                    session: SessionDep) -> Response:
    return _retrieve(request, services, session, study=study, series=series)


@router.get("/studies/{study}/series/{series}/metadata", summary="Retrieve a series' metadata (WADO-RS)")
def series_metadata(study: str, series: str, request: Request, services: ServicesDep,
                    session: SessionDep) -> Response:
    return _metadata(request, services, session, study=study, series=series)


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="Retrieve an instance (WADO-RS)")
def retrieve_instance(study: str, series: str, instance: str, request: Request, services: ServicesDep,
                      session: SessionDep) -> Response:
    return _retrieve(request, services, session, study=study, series=series, instance=instance)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata",
            summary="Retrieve an instance's metadata (WADO-RS)")
def instance_metadata(study: str, series: str, instance: str, request: Request, services: ServicesDep,
                      session: SessionDep) -> Response:
    return _metadata(request, services, session, study=study, series=series, instance=instance)


# -- WADO-RS: frames and bulk data (PS3.18 10.4.1.1.3, 10.4.1.1.4) -----------------------------

@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            summary="Retrieve frames (WADO-RS)")
def retrieve_frames(study: str, series: str, instance: str, frames: str, request: Request,
                    services: ServicesDep, session: SessionDep) -> Response:
    """Uncompressed (``application/octet-stream``) by default; the stored compressed bytes when
    Accept names their media type or ``transfer-syntax=*``; one frame as a single part when
    Accept names the bare media type (``Accept: application/octet-stream``)."""
    [item] = wado.locate(session, _areas(services), study=study, series=series, instance=instance)
    service = wado.Wado(services.db, _areas(services), base_url(request))
    numbers = service.frame_numbers(item, frames)
    media, single = service.frames_media(item, _accepted(request))
    if single:
        if len(numbers) != 1:
            raise DicomwebError(406, f"{len(numbers)} frames are several parts: ask for multipart/related; "
                                     f'type="{media}", or for one frame at a time')
        [part] = service.frame_parts(item, numbers, media)
        return single_part_response(part)
    return multipart_response(service.frame_parts(item, numbers, media), media)


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
            summary="Retrieve bulk data (WADO-RS)")
def retrieve_bulkdata(study: str, series: str, instance: str, tag: str, request: Request,
                      services: ServicesDep, session: SessionDep) -> Response:
    """The BulkDataURI of the metadata: an element's value (``application/octet-stream``; Pixel
    Data uncompressed), or a video object's bitstream (``video/mp4``, ``video/mpeg``); in a
    multipart/related body, or alone when Accept names the bare media type (PS3.18 8.7.3.2)."""
    [item] = wado.locate(session, _areas(services), study=study, series=series, instance=instance)
    service = wado.Wado(services.db, _areas(services), base_url(request))
    element = service.bulkdata_tag(tag.upper())
    media = service.bulkdata_media(item, element)
    single = negotiate(_accepted(request), media)
    if single is None:
        raise DicomwebError(406, f'this bulk data is available as {media}, alone or in multipart/related; '
                                 f'type="{media}"')
    part = service.bulkdata_part(item, element)
    return single_part_response(part) if single else multipart_response([part], media)


def _accepted(request: Request) -> list[MediaRange]:
    """The Accept header's ranges, or those of the ``accept`` query parameter, which stands for
    it (PS3.18 8.3.3.1: a URL a browser's ``<video src>`` can fetch)."""
    return accept(request.query_params.get("accept") or request.headers.get("accept"))


# -- WADO-RS: rendered and thumbnails (PS3.18 10.4.1.1.5, 10.4.1.1.6) --------------------------

def _rendered(request: Request, services: Services, item: wado.Located, frame: int, *,
              thumbnail: bool = False) -> Response:
    if not item.rows:
        raise DicomwebError(406, f"instance {item.sop_instance_uid} has no pixel data: only images are rendered")
    media = render.rendered_media(accept(request.headers.get("accept")))
    params = render.parse_params(list(request.query_params.multi_items()), thumbnail=thumbnail)
    ds = wado.Wado(services.db, _areas(services), base_url(request)).dataset(item)
    return Response(render.render(ds, frame=frame, media=media, params=params), media_type=media)


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered",
            summary="Retrieve a rendered instance (WADO-RS)")
def rendered_instance(study: str, series: str, instance: str, request: Request, services: ServicesDep,
                      session: SessionDep) -> Response:
    """image/jpeg (or image/png by Accept) of the first frame; ``window=center,width,function``,
    ``viewport=w,h``, ``quality``."""
    [item] = wado.locate(session, _areas(services), study=study, series=series, instance=instance)
    return _rendered(request, services, item, 1)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
            summary="Retrieve a rendered frame (WADO-RS)")
def rendered_frame(study: str, series: str, instance: str, frames: str, request: Request,
                   services: ServicesDep, session: SessionDep) -> Response:
    [item] = wado.locate(session, _areas(services), study=study, series=series, instance=instance)
    numbers = wado.Wado(services.db, _areas(services), base_url(request)).frame_numbers(item, frames)
    if len(numbers) != 1:
        raise DicomwebError(400, "a rendered image is one frame: ask for frames/N/rendered")
    return _rendered(request, services, item, numbers[0])


def _thumbnail(request: Request, services: Services, items: list[wado.Located]) -> Response:
    """A middle image of the first series that has images; of an instance, its middle frame."""
    images = [i for i in items if i.rows]
    if not images:
        raise DicomwebError(404, "there is no image to make a thumbnail of")
    first_series = [i for i in images if i.series_uid == images[0].series_uid]
    item = first_series[len(first_series) // 2]
    return _rendered(request, services, item, item.frames // 2 + 1, thumbnail=True)


@router.get("/studies/{study}/thumbnail", summary="Retrieve a study thumbnail (WADO-RS)")
def study_thumbnail(study: str, request: Request, services: ServicesDep, session: SessionDep) -> Response:
    return _thumbnail(request, services, wado.locate(session, _areas(services), study=study))


@router.get("/studies/{study}/series/{series}/thumbnail", summary="Retrieve a series thumbnail (WADO-RS)")
def series_thumbnail(study: str, series: str, request: Request, services: ServicesDep,
                     session: SessionDep) -> Response:
    return _thumbnail(request, services, wado.locate(session, _areas(services), study=study, series=series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail",
            summary="Retrieve an instance thumbnail (WADO-RS)")
def instance_thumbnail(study: str, series: str, instance: str, request: Request, services: ServicesDep,
                       session: SessionDep) -> Response:
    return _thumbnail(request, services, wado.locate(session, _areas(services), study=study, series=series,
                                                      instance=instance))


# -- STOW-RS (PS3.18 10.5) ---------------------------------------------------------------------

async def _store(request: Request, services: Services, study: str | None) -> Response:
    boundary = boundary_of(request.headers.get("content-type"))
    archive = services.archive
    stow = Stow(archive, base_url(request), study)
    reader = MultipartReader(request.stream(), boundary, incoming_dir(archive.area) or services.settings.data_dir)
    try:
        async for part in reader:
            await asyncio.to_thread(stow.store_part, part)
    except DicomwebError as exc:
        if not stow.outcomes:
            raise
        stow.failed_body(exc.message)
    if not stow.outcomes:
        raise DicomwebError(400, "the request has no parts to store")
    status, body, warnings = stow.response()
    return Response(dumps(body), status_code=status, media_type=DICOM_JSON, headers=_warning_header(warnings))


@router.post("/studies", summary="Store instances (STOW-RS)")
async def store_instances(request: Request, services: ServicesDep) -> Response:
    """``multipart/related; type="application/dicom"``: 200 all stored, 202 some failed or
    stored with a warning, 409 none stored; the JSON body says which and why."""
    return await _store(request, services, None)


@router.post("/studies/{study}", summary="Store instances of one study (STOW-RS)")
async def store_study_instances(study: str, request: Request, services: ServicesDep) -> Response:
    return await _store(request, services, study)
