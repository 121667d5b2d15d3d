"""DIMSE (pynetdicom): the receiver, the sender, the simulated scanner and the SCU for
archives without DICOMweb."""
