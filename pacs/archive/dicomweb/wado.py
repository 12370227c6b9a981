"""WADO-RS (PS3.18 10.4): studies, series and instances as DICOM, their metadata, bulk data and
frames, read from the storage area.

What streams and what doesn't:

- an instance that goes out as stored (its transfer syntax accepted, its patient and order
  values what the index says) is copied from its file one chunk at a time, so a study of any
  size passes through a few megabytes of memory;
- an instance that must change is re-encoded alone, in memory, when its turn comes: corrected
  (:func:`pacs.archive.retrieve.correct`: the registry's patient, the order's accession number,
  while the file keeps what the modality sent), or transcoded to Explicit VR Little Endian
  because the client did not accept its stored syntax (PS3.18 8.7.3.5.2 makes that the default;
  compressed pixel data is decoded by pydicom's plugins, keeping the SOP Instance UID);
- metadata is written instance by instance as a JSON array; bulk data and uncompressed frames
  of a natively encoded object are copied from their byte range of the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from io import BytesIO
from typing import Any, BinaryIO, cast

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, select

from pacs.archive.charset import FULL_REPERTOIRES, UNICODE, Answer
from pacs.archive.dicomweb.cache import MetadataCache, absolute
from pacs.archive.dicomweb.dicomjson import dumps, element_json
from pacs.archive.dicomweb.media import (
    DICOM,
    EXPLICIT_VR_LITTLE_ENDIAN,
    MULTIPART,
    OCTET_STREAM,
    PIXEL_MEDIA_TYPES,
    VIDEO_MEDIA_TYPES,
    DicomwebError,
    MediaRange,
    Part,
    bad_request,
    file_chunks,
    not_acceptable,
    not_found,
    shown,
)
from pacs.archive.index import COPY_SYNTAX, NOT_REJECTED, Instance, InstanceFile, Series, Study
from pacs.archive.retrieve import Retriever, correct, syntax_of
from pacs.archive.storage import StorageArea
from pacs.db import Database, row_id
from pacs.integration.names import NameRules

log = logging.getLogger(__name__)

PIXEL_DATA = Tag(0x7FE00010)
SPECIFIC_CHARACTER_SET = Tag(0x00080005)
BULK_THRESHOLD = 1024  # values longer than this are given as a BulkDataURI (PS3.18 F.2.6)
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
TRANSCODE_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")  # PS3.18 F.2.2


@dataclass(frozen=True)
class Located:
    """One stored instance a request names, and where its file is."""

    study_id: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str  # of the copy read (lossless migration may have re-encoded it)
    instance_number: int | None
    rows: int | None
    number_of_frames: int | None
    area: str
    key: str
    size: int  # of the stored file, bytes

    @property
    def frames(self) -> int:
        return self.number_of_frames or 1


def locate(session: Session, areas: dict[str, StorageArea], *, study: str, series: str | None = None,
           instance: str | None = None) -> list[Located]:
    """The instances of a study, series or instance, in series and instance-number order, each
    with a copy in a readable area (a study on a nearline or offline tier is recalled into the
    online cache first, as for C-MOVE); 404 naming the first UID the archive does not hold."""
    query = (sql_select(col(Study.id), col(Study.study_instance_uid), col(Series.series_instance_uid),
                        col(Instance.sop_instance_uid), col(Instance.sop_class_uid), COPY_SYNTAX,
                        col(Instance.instance_number), col(Instance.rows), col(Instance.number_of_frames),
                        col(InstanceFile.area), col(InstanceFile.key), col(InstanceFile.size))
             .join(Series, col(Series.study) == col(Study.id)).join(Instance, col(Instance.series) == col(Series.id))
             .join(InstanceFile, col(InstanceFile.instance) == col(Instance.id))
             .where(col(Study.study_instance_uid) == study, NOT_REJECTED))  # nothing from the trash (IOCM)
    if series is not None:
        query = query.where(col(Series.series_instance_uid) == series)
    if instance is not None:
        query = query.where(col(Instance.sop_instance_uid) == instance)
    query = query.order_by(col(Series.series_number), col(Series.id), col(Instance.instance_number),
                           col(Instance.id))
    rows = session.execute(query).all()
    ensure = getattr(areas, "ensure", None)
    if rows and ensure is not None and ensure((row[3], row[0], row[9]) for row in rows):
        session.rollback()  # a new snapshot, which sees the recalled copies
        rows = session.execute(query).all()
    seen: set[str] = set()
    found = []
    for row in rows:
        item = Located(*row)
        if item.sop_instance_uid in seen or item.area not in areas:
            continue  # one copy is enough
        if not item.transfer_syntax:
            item = replace(item, transfer_syntax=syntax_of(areas[item.area], item.key))
        seen.add(item.sop_instance_uid)
        found.append(item)
    if not rows:
        raise not_found(_missing(session, study, series, instance))
    if not found:
        raise DicomwebError(503, "no copy of the instances asked for can be read now (a storage tier is "
                                 "unavailable); try again later")  # 503 Service Unavailable
    return found


def _missing(session: Session, study: str, series: str | None, instance: str | None) -> str:
    if session.exec(select(Study.id).where(Study.study_instance_uid == study)).first() is None:
        return f"study {study} is not in the archive"
    if series is not None and session.exec(
            select(Series.id).join(Study, col(Study.id) == col(Series.study)).where(
                Study.study_instance_uid == study, Series.series_instance_uid == series)).first() is None:
        return f"series {series} is not in study {study}"
    return f"instance {instance} is not in series {series} of study {study}"


def decodable(syntax: str) -> bool:
    """Whether pydicom can produce uncompressed pixel data from ``syntax``."""
    uid = UID(syntax)
    if not uid.is_encapsulated:
        return True
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


# -- Accept for DICOM (PS3.18 8.7.3.5) -------------------------------------------------------

@dataclass
class DicomAccept:
    syntaxes: list[str]  # transfer syntaxes in the client's order of preference; "*": as stored
    single_part: bool = False  # bare application/dicom (one instance only)

    def choose(self, stored: str) -> str | None:
        """The transfer syntax an instance stored in ``stored`` goes out in, or None."""
        for syntax in self.syntaxes:
            if syntax in ("*", stored):
                return stored
            if syntax in TRANSCODE_TARGETS and decodable(stored) and stored != ExplicitVRBigEndian:
                return syntax
        return None


def dicom_accept(ranges: list[MediaRange], *, single_allowed: bool) -> DicomAccept:
    """What a retrieve may send: ``multipart/related; type="application/dicom"`` with the
    transfer syntaxes asked for (Explicit VR Little Endian when none is named), or for one
    instance a bare ``application/dicom``; 406 otherwise."""
    syntaxes: list[str] = []
    single: list[str] = []
    for item in ranges:
        if (item.type == MULTIPART and item.part_type in ("", DICOM)) or item.type in ("*/*", "multipart/*"):
            syntaxes.append(item.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN)
        elif item.type == DICOM and single_allowed:
            single.append(item.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN)
    if syntaxes:
        return DicomAccept(syntaxes)
    if single:
        return DicomAccept(single, single_part=True)
    raise not_acceptable(f'this resource is available as {MULTIPART}; type="{DICOM}" (with a transfer-syntax '
                         'parameter, or * for the stored one)')


# -- the service -----------------------------------------------------------------------------

class Wado:
    """Reads stored instances for one request."""

    def __init__(self, db: Database, areas: dict[str, StorageArea], base_url: str,
                 cache: MetadataCache | None = None, names: NameRules | None = None) -> None:
        self.areas = areas
        self.base_url = base_url
        self.cache = cache
        self.names = names  # with them, metadata gives each PN the groups QIDO gives it
        self.retriever = Retriever(db, areas)
        self._truths: dict[int, tuple[dict[str, str], bool]] = {}

    def truth(self, item: Located) -> dict[str, str] | None:
        """The index's patient and order values when the file's differ, else None."""
        if item.study_id not in self._truths:
            self._truths[item.study_id] = self.retriever.truth(item.study_id)
        values, corrected = self._truths[item.study_id]
        return values if corrected else None

    def instance_url(self, item: Located) -> str:
        return (f"{self.base_url}/studies/{item.study_uid}/series/{item.series_uid}"
                f"/instances/{item.sop_instance_uid}")

    def _source(self, item: Located) -> Any:
        area = self.areas[item.area]
        path = area.local_path(item.key)
        return str(path) if path is not None else BytesIO(area.read(item.key))

    def dataset(self, item: Located) -> Dataset:
        """The whole stored object, as the modality sent it."""
        return pydicom.dcmread(self._source(item))

    def _open(self, item: Located) -> BinaryIO:
        return self.areas[item.area].open(item.key)

    # -- instances as DICOM -----------------------------------------------------------------
    def check_syntaxes(self, items: list[Located], wanted: DicomAccept) -> list[str]:
        """The transfer syntax of each instance; 406 before anything is sent if one can't be made."""
        chosen = []
        for item in items:
            syntax = wanted.choose(item.transfer_syntax)
            if syntax is None:
                raise not_acceptable(f"instance {item.sop_instance_uid} is stored as {item.transfer_syntax}, which "
                                     f"can't be sent as {', '.join(wanted.syntaxes)}; accept transfer-syntax=* or "
                                     f"{EXPLICIT_VR_LITTLE_ENDIAN}")
            chosen.append(syntax)
        return chosen

    def dicom_parts(self, items: list[Located], syntaxes: list[str]) -> Iterable[Part]:
        """One part per instance. When every instance goes out as stored, a list whose sizes are
        known (each file opened as its turn comes); otherwise parts made as they are sent, and an
        instance that can't be re-encoded (pixel data no installed decoder reads) is left out and
        logged, as the response has already begun."""
        if all(syntax == item.transfer_syntax and self.truth(item) is None
               for item, syntax in zip(items, syntaxes, strict=True)):
            return [self.stored_part(item, lazy=True) for item in items]
        return self._made_parts(items, syntaxes)

    def _made_parts(self, items: list[Located], syntaxes: list[str]) -> Iterator[Part]:
        for item, syntax in zip(items, syntaxes, strict=True):
            try:
                yield self.dicom_part(item, syntax)
            except DicomwebError as exc:
                log.error("left out of a WADO-RS response: %s", exc.message)

    def stored_part(self, item: Located, *, lazy: bool = False) -> Part:
        """The stored file as it is, chunk by chunk; ``lazy`` opens it only when its turn comes."""
        size = item.size or None  # a size of 0 would be a row written without one: read to the end

        def chunks() -> Iterator[bytes]:
            yield from file_chunks(self._open(item), 0, size)
        return Part(f"{DICOM}; transfer-syntax={item.transfer_syntax}",
                    chunks() if lazy else file_chunks(self._open(item), 0, size),
                    location=self.instance_url(item), size=size)

    def dicom_part(self, item: Located, syntax: str) -> Part:
        """The Part 10 bytes of one instance: the file itself, chunk by chunk, or re-encoded in
        memory when it must change (corrected values, another transfer syntax)."""
        truth = self.truth(item)
        if syntax == item.transfer_syntax and truth is None:
            return self.stored_part(item)
        try:
            encoded = self.encode(item, syntax, truth)
        except Exception as exc:  # pydicom's decoders raise many kinds of errors
            raise not_acceptable(f"instance {item.sop_instance_uid} ({item.transfer_syntax}) can't be sent as "
                                 f"{syntax}: {exc}; accept transfer-syntax=* to get it as stored") from None
        return Part(f"{DICOM}; transfer-syntax={syntax}", iter([encoded]), location=self.instance_url(item),
                    size=len(encoded))

    def encode(self, item: Located, syntax: str, truth: dict[str, str] | None) -> bytes:
        ds = self.dataset(item)
        if truth is not None:
            correct(ds, truth)
        stored = str(ds.file_meta.TransferSyntaxUID)
        if syntax != stored:
            if UID(stored).is_encapsulated:
                # The same image in another encoding keeps its identity (no new SOP Instance UID).
                ds.decompress(generate_instance_uid=False)
            ds.file_meta.TransferSyntaxUID = UID(syntax)
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    # -- metadata (PS3.18 10.4.1.1.2, F.2) --------------------------------------------------
    def metadata_chunks(self, items: list[Located]) -> Iterator[bytes]:
        """A JSON array of the instances' attributes, written one instance at a time."""
        yield b"["
        for number, item in enumerate(items):
            yield (b"," if number else b"") + self.metadata_json(item)
        yield b"]"

    def metadata_json(self, item: Located) -> bytes:
        """One instance's DICOM JSON: from the cache when it has been built before."""
        stored = self.cache.get(item.sop_instance_uid, item.transfer_syntax, item.key) if self.cache else None
        if stored is None:
            stored = dumps(self.stored_metadata(item))
            if self.cache is not None:
                self.cache.put(item.sop_instance_uid, item.transfer_syntax, item.key, stored)
        truth = self.truth(item)
        if truth is not None or (self.names is not None and not stored.isascii() and b'"vr":"PN"' in stored):
            attributes = json.loads(stored)
            if self.names is not None:
                attributes = person_groups(attributes, Answer(UNICODE, self.names))
            if truth is not None:
                attributes = corrected_json(attributes, truth)
            stored = dumps(attributes)
        return absolute(stored, self.instance_url(item))

    def metadata(self, item: Located) -> dict[str, Any]:
        """One instance's DICOM JSON as a dict, corrected and with absolute bulk data URIs."""
        return cast(dict[str, Any], json.loads(self.metadata_json(item)))

    def stored_metadata(self, item: Located) -> dict[str, Any]:
        """The DICOM JSON of the stored object, bulk data URIs relative to the instance."""
        ds = pydicom.dcmread(self._source(item), defer_size=BULK_THRESHOLD, stop_before_pixels=True)
        out: dict[str, Any] = {}
        for tag in sorted(ds._dict):
            raw = ds._dict.get(tag)
            key = f"{tag:08X}"
            if isinstance(raw, RawDataElement) and raw.value is None and raw.length > BULK_THRESHOLD:
                vr = raw.VR or _dictionary_vr(tag)
                if vr in BULK_VRS:  # not read at all: named by URI
                    out[key] = {"vr": vr, "BulkDataURI": f"bulkdata/{key}"}
                    continue
            try:
                element = ds[tag]
                big = (element.VR in BULK_VRS and element.value is not None
                       and len(element.value) > BULK_THRESHOLD)
                out[key] = element_json(element, f"bulkdata/{key}" if big else None)
            except Exception as exc:  # a value pydicom can't decode must not break the whole answer
                log.warning("metadata of %s: element %s left out: %s", item.sop_instance_uid, key, exc)
        if "Rows" in ds and "BitsAllocated" in ds:
            compressed = UID(item.transfer_syntax).is_encapsulated
            bits = _single_int(ds, "BitsAllocated")
            out[f"{PIXEL_DATA:08X}"] = {"vr": "OB" if compressed or (bits or 0) <= 8 else "OW",
                                        "BulkDataURI": f"bulkdata/{PIXEL_DATA:08X}"}
        return out

    # -- bulk data (PS3.18 10.4.1.1.4) ------------------------------------------------------
    @staticmethod
    def bulkdata_tag(tag_text: str) -> Tag:
        try:
            tag = Tag(int(tag_text, 16)) if len(tag_text) == 8 else None
        except ValueError:
            tag = None
        if tag is None:
            raise bad_request(f"bulk data {shown(tag_text)}: name the element by its tag, ggggeeee in hex")
        return tag

    @staticmethod
    def bulkdata_media(item: Located, tag: Tag) -> str:
        """The media type of an element's bulk data: a video object's pixel data is its
        bitstream (``video/mp4``, ``video/mpeg``), everything else ``application/octet-stream``
        (pixel data uncompressed)."""
        return VIDEO_MEDIA_TYPES.get(item.transfer_syntax, OCTET_STREAM) if tag == PIXEL_DATA else OCTET_STREAM

    def bulkdata_part(self, item: Located, tag: Tag) -> Part:
        if tag == PIXEL_DATA and item.transfer_syntax in VIDEO_MEDIA_TYPES:
            return self.video_part(item)
        tag_text = f"{tag:08X}"
        if tag == PIXEL_DATA:
            frames = list(range(1, item.frames + 1))
            return Part(OCTET_STREAM, (c for part in self.native_frame_parts(item, frames) for c in part.chunks))
        ds = pydicom.dcmread(self._source(item), defer_size=BULK_THRESHOLD, stop_before_pixels=True)
        if tag not in ds:
            raise not_found(f"instance {item.sop_instance_uid} has no element {tag_text}")
        value = ds[tag].value
        if not isinstance(value, bytes):
            raise not_found(f"element {tag_text} of instance {item.sop_instance_uid} is not bulk data")
        return Part(OCTET_STREAM, iter([value]))

    def video_part(self, item: Located) -> Part:
        """A video object's bitstream: the fragments of its pixel data after the Basic Offset
        Table item, joined (PS3.5 A.4: one frame item sequence holds the whole stream)."""
        from pydicom.encaps import generate_fragments

        ds = self.dataset(item)
        fragments = generate_fragments(ds.PixelData)
        next(fragments, None)  # the Basic Offset Table (empty for video)
        data = b"".join(fragments)
        return Part(VIDEO_MEDIA_TYPES[item.transfer_syntax], iter([data]), size=len(data))

    # -- frames (PS3.18 10.4.1.1.3) ---------------------------------------------------------
    def frame_numbers(self, item: Located, text: str) -> list[int]:
        parts = [n.strip() for n in text.split(",")]
        if not all(p.isascii() and p.isdigit() for p in parts):
            raise bad_request(f"frames {shown(text)}: give frame numbers separated by commas, e.g. 1,2,3")
        # read without int() meeting thousands of digits: past the largest row id is past every frame
        numbers = [item.frames + 1 if (n := row_id(p)) is None else n for p in parts]
        if any(n < 1 for n in numbers):
            raise bad_request("frame numbers start at 1")
        beyond = [n for n in numbers if n > item.frames]
        if beyond:
            raise not_found(f"instance {item.sop_instance_uid} has {item.frames} frame(s); there is no frame "
                            f"{beyond[0]}")
        return numbers

    def frames_media(self, item: Located, ranges: list[MediaRange]) -> tuple[str, bool]:
        """``application/octet-stream`` (uncompressed) or the stored compressed media type,
        whichever the client asks for first (PS3.18 8.7.3.3, Table 8.7.3-2), and whether as a
        single part (the bare media type asked for, PS3.18 8.7.3.2) rather than multipart."""
        if item.transfer_syntax in VIDEO_MEDIA_TYPES:
            raise not_acceptable(f"instance {item.sop_instance_uid} is a video: its pixel data is one bitstream, "
                                 f"retrieved as bulk data ({VIDEO_MEDIA_TYPES[item.transfer_syntax]}), not frames")
        stored_media = PIXEL_MEDIA_TYPES.get(item.transfer_syntax)
        for r in ranges:
            if r.type == MULTIPART:
                part, single = MediaRange(r.part_type or "*/*"), False
            elif r.type in ("*/*", "multipart/*"):
                part, single = MediaRange("*/*"), False
            else:
                part, single = r, True
            syntax = r.transfer_syntax
            if stored_media and part.matches(stored_media) and (syntax in ("*", item.transfer_syntax) or (
                    syntax is None and part.type == stored_media)):
                return stored_media, single
            if part.matches(OCTET_STREAM) and (syntax in (None, EXPLICIT_VR_LITTLE_ENDIAN) or (
                    syntax == "*" and not stored_media)) and decodable(item.transfer_syntax):
                return OCTET_STREAM, single
        raise not_acceptable(f'frames are available as {MULTIPART}; type="{OCTET_STREAM}" (uncompressed)'
                             + (f' or type="{stored_media}"; transfer-syntax={item.transfer_syntax} (as stored)'
                                if stored_media else "") + f", or as {OCTET_STREAM} alone for one frame")

    def frame_parts(self, item: Located, numbers: list[int], media: str) -> Iterator[Part]:
        """The frames asked for, uncompressed or as the stored compressed bitstreams."""
        if media == OCTET_STREAM:
            return self.native_frame_parts(item, numbers)
        from pydicom.encaps import get_frame

        ds = self.dataset(item)
        content_type = f"{media}; transfer-syntax={item.transfer_syntax}"
        url = self.instance_url(item)
        return (Part(content_type, iter([get_frame(ds.PixelData, n - 1, number_of_frames=item.frames)]),
                     location=f"{url}/frames/{n}") for n in numbers)

    def native_frame_parts(self, item: Located, numbers: list[int]) -> Iterator[Part]:
        """Uncompressed frames: byte ranges of the file when it is natively encoded little endian,
        else decoded by pydicom one frame at a time (the first before the response begins, so
        pixel data no installed decoder reads is a 406, not a broken response)."""
        url = self.instance_url(item)
        layout = self._native_layout(item)
        if layout is not None:
            offset, size = layout
            return (Part(OCTET_STREAM, file_chunks(self._open(item), offset + (n - 1) * size, size),
                         location=f"{url}/frames/{n}") for n in numbers)
        ds = self.dataset(item)
        first = self._decoded_frame(ds, item, numbers[0])

        def parts() -> Iterator[Part]:
            yield Part(OCTET_STREAM, iter([first]), location=f"{url}/frames/{numbers[0]}")
            for number in numbers[1:]:
                yield Part(OCTET_STREAM, iter([self._decoded_frame(ds, item, number)]),
                           location=f"{url}/frames/{number}")

        return parts()

    @staticmethod
    def _decoded_frame(ds: Dataset, item: Located, number: int) -> bytes:
        from pydicom.pixels import pixel_array

        try:
            frame = pixel_array(ds, index=number - 1)
        except Exception as exc:  # pydicom's decoders raise many kinds of errors
            raise not_acceptable(f"the pixel data of {item.sop_instance_uid} ({item.transfer_syntax}) can't be "
                                 f"decoded here: {exc}; ask for it as stored") from None
        return np.ascontiguousarray(frame).astype(frame.dtype.newbyteorder("<")).tobytes()

    def _native_layout(self, item: Located) -> tuple[int, int] | None:
        """(file offset of the pixel data, bytes per frame), when frames are byte ranges of the file."""
        syntax = UID(item.transfer_syntax)
        if syntax.is_encapsulated or syntax.is_deflated or syntax == ExplicitVRBigEndian:
            return None
        if self.areas[item.area].local_path(item.key) is None:
            return None  # ranges of a local file only
        ds = pydicom.dcmread(self._source(item), defer_size=BULK_THRESHOLD)
        raw = ds._dict.get(PIXEL_DATA)
        if not isinstance(raw, RawDataElement) or raw.value is not None or raw.value_tell is None:
            return None
        try:
            bits = int(ds.BitsAllocated)
            size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1) * bits // 8
        except (AttributeError, TypeError, ValueError):
            return None
        if bits % 8 or size * item.frames > raw.length:
            return None
        return raw.value_tell, size


def _single_int(ds: Dataset, keyword: str) -> int | None:
    """A one-valued integer attribute of ``ds``, or None when it is absent, empty, of several
    values or not decodable (store() refuses those it indexes; older objects may hold them)."""
    try:
        value = ds.get(keyword)
        return int(value) if isinstance(value, int) else None
    except Exception:  # pydicom's converters raise many kinds of errors
        return None


def person_groups(attributes: dict[str, Any], answer: Answer) -> dict[str, Any]:
    """DICOM JSON whose person names written in one group of Han characters (``王五``) have the
    groups a QIDO-RS answer gives them (``WANG^WU=王^五``: the pinyin as the alphabetic group,
    PS3.5 6.2.1.2), so that a viewer reading either shows the same name."""
    for key, element in attributes.items():
        if element.get("vr") != "PN" or "Value" not in element:
            continue
        names = element["Value"]
        if not any(isinstance(n, dict) and set(n) == {"Alphabetic"} and not n["Alphabetic"].isascii() for n in names):
            continue
        values = [answer.person(n["Alphabetic"]) if isinstance(n, dict) and set(n) == {"Alphabetic"} else
                  "=".join((n or {}).get(g, "") for g in PN_GROUPS).rstrip("=") for n in names]
        attributes[key] = element_json(DataElement(Tag(int(key, 16)), "PN", values if len(values) > 1 else values[0]))
    return attributes


def corrected_json(attributes: dict[str, Any], truth: dict[str, str]) -> dict[str, Any]:
    """DICOM JSON with the index's patient and order values, as
    :func:`pacs.archive.retrieve.correct` puts them into a file."""
    patch = Dataset()
    for keyword, value in truth.items():
        if value or f"{Tag(keyword):08X}" in attributes:
            setattr(patch, keyword, value)
    if any(not v.isascii() for v in truth.values()):
        charset = attributes.get(f"{SPECIFIC_CHARACTER_SET:08X}", {}).get("Value", [""])[0] or ""
        if str(charset).upper() not in FULL_REPERTOIRES:
            patch.SpecificCharacterSet = "ISO_IR 192"
    for element in patch:
        attributes[f"{element.tag:08X}"] = element_json(element, None)
    return dict(sorted(attributes.items()))


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"
