"""DICOM files at the byte level: the fast header scan, SOP class sets, paths to files."""
