"""/api/capture: a device or a script sends a photo, a scan or a PDF for an order.

``POST /api/capture`` (``multipart/form-data``, permission ``images.write``, which technologists
hold) with one or more ``file`` parts and the exam: ``order`` (the order's id) or
``accession_number``; or neither, and the file is matched by ``mappings/devices.yaml``'s rules for
``device`` (a ``capture.yaml`` name; ``CAPTURE``, a camera, when none is given), with the
accession number its name starts with and the ``patient_id`` given. The files of one request
become one series.

- 201: every file stored; ``stored`` lists their SOP Class, SOP Instance, Series and Study
  Instance UIDs and the order's accession number;
- 202: no single order was found (an accession number with two orders, rules that find none):
  the files wait on the reconciliation list, ``queued`` lists their items
  (``POST /api/reconciliation/{id}/attach`` attaches one);
- 400: a file that is no JPEG, PNG, BMP, TIFF or PDF, or cannot be read, or an unknown device;
  nothing is stored; 404: the order or accession number named does not exist; 409: the order
  has ended (cancelled, discontinued); 413: a file larger than ``MAX_FILE_BYTES``;
  507: the archive could not store it. A refusal's body is ``detail`` (the reason in English),
  ``code`` and ``values`` (the same reason as a code of :mod:`pacs.capture.reasons`, which the
  catalogues translate as ``capture.reason.<code>``); a queued file has them too.

    curl -u tech:... -F file=@endo_1.jpg -F file=@report.pdf -F accession_number=A0017 \\
         -F device=ENDO2 https://pacs.example/api/capture
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pacs.auth.access import Principal, require
from pacs.auth.roles import Permission
from pacs.capture.service import (
    Capture,
    OrderEnded,
    Queued,
    StoreFailed,
    Unconvertible,
    UnknownOrder,
)
from pacs.db import MAX_ROW_ID
from pacs.http import ServicesDep

router = APIRouter(prefix="/api/capture", tags=["capture"])

MAX_FILE_BYTES = 512 * 1024 * 1024  # a file larger than this is refused (413) before it is read whole
MAX_FILES = 100  # files in one request


def capture_of(services: ServicesDep) -> Capture:
    if services.capture is None:
        raise HTTPException(503, "this process does not take captures")
    return services.capture


@router.post("", status_code=201, responses={
    202: {"description": "no single order found: the files wait on the reconciliation list"},
    400: {"description": "a file that cannot be converted, or an unknown device"},
    404: {"description": "the order named does not exist"},
    409: {"description": "the order named has ended"}})
async def capture_files(
    services: ServicesDep,
    principal: Annotated[Principal, Depends(require(Permission.IMAGES_WRITE))],
    file: Annotated[list[UploadFile], File(description="the photo, scan or PDF; repeat for more")],
    order: Annotated[int | None, Form(ge=1, le=MAX_ROW_ID, description="the order's id")] = None,
    accession_number: Annotated[str | None, Form(max_length=16, description="the order's (0008,0050)")] = None,
    patient_id: Annotated[str | None, Form(max_length=64, description="for the device rules")] = None,
    device: Annotated[str | None, Form(max_length=16, description="a capture.yaml device name")] = None,
) -> Any:
    capture = capture_of(services)
    if order is not None and accession_number:
        raise HTTPException(400, "give order or accession_number, not both")
    if len(file) > MAX_FILES:
        raise HTTPException(400, f"{len(file)} files in one request; at most {MAX_FILES}")
    files = []
    for part in file:
        if part.size is not None and part.size > MAX_FILE_BYTES:
            raise HTTPException(413, f"{part.filename}: {part.size} bytes; at most {MAX_FILE_BYTES} are taken")
        files.append((part.filename or "", await part.read()))
    try:
        chosen = capture.device(device)
        results = await run_in_threadpool(
            capture.capture, files, device=chosen, order=order, accession_number=(accession_number or "").strip(),
            patient_id=(patient_id or "").strip() or None, by=principal.name or "api")
    except Unconvertible as exc:
        return JSONResponse(exc.as_json(), status_code=400)
    except UnknownOrder as exc:
        return JSONResponse(exc.as_json(), status_code=404)
    except OrderEnded as exc:
        return JSONResponse(exc.as_json(), status_code=409)
    except StoreFailed as exc:
        return JSONResponse(exc.as_json(), status_code=507)
    stored = [r.as_json() for r in results if not isinstance(r, Queued)]
    queued = [r.as_json() for r in results if isinstance(r, Queued)]
    return JSONResponse({"stored": stored, "queued": queued}, status_code=202 if queued and not stored else 201)
