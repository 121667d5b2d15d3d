"""Teaches pynetdicom the DICOS storage SOP classes, which it does not know (3.0.4)."""

from __future__ import annotations

import threading

from pynetdicom import sop_class
from pynetdicom.service_class import StorageServiceClass

from station.core.dicom.sopclasses import DICOS_SOP_CLASSES

_lock = threading.Lock()


def register_dicos_sop_classes() -> list[str]:
    """Register every DICOS class with pynetdicom's storage service (idempotent); return the UIDs."""
    with _lock:
        for uid, keyword in DICOS_SOP_CLASSES.items():
            if not hasattr(sop_class, keyword):
                sop_class.register_uid(uid, keyword, StorageServiceClass)
    return list(DICOS_SOP_CLASSES)
