"""DICOMweb at /dicomweb (PS3.18): QIDO-RS search, WADO-RS retrieve, STOW-RS store."""

from pacs.archive.dicomweb.api import router

__all__ = ["router"]
