"""Synthetic scans: packed bags with planted threats (CT, DX) and a clinical phantom."""
