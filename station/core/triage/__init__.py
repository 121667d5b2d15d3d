"""Triage: the decision queue, alerts from TDRs, the audit log and shift reports."""
