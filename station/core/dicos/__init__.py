"""NEMA DICOS objects: Threat Detection Reports (read, write, inspect)."""
