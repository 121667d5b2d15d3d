"""Routing state: the persistent outbox of forwarding jobs."""
