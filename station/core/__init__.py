"""Data model, store, volumes and synthetic data. No Qt, no sockets."""
