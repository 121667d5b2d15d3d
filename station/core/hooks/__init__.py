"""Scripting hooks: site scripts subscribe to station events and register detectors."""
