"""Threat detection: the detector interface, the built-in density detector, the runner and
the service that examines every CT scan the store receives."""
