"""Non-DICOM devices: photos, scans, PDFs made DICOM for an order (issue 22)."""
