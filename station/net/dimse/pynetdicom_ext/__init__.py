"""The station's changes to pynetdicom, quarantined here and checked against the pinned version."""
