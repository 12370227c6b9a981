"""The DICOM side: the application entity, the worklist, MPPS and (to come) the archive."""
