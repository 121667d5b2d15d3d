"""DICOM networking (pynetdicom): receiver and sender. No Qt."""
