"""Real peers for tests and benchmarks: a private Orthanc, dcmtk tools, free ports.

Product code never imports this package (import-linter contract in pyproject.toml) and the
frozen app leaves it out (packaging/station.spec).
"""
