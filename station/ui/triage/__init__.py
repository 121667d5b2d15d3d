"""Keyboard triage: decision keys, the alert panel, sign-in and shift statistics."""
