"""DICOMweb client: QIDO-RS, WADO-RS metadata and frames, STOW-RS."""
