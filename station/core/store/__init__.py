"""The local store: files on disk, the SQLite index, durable writes and eviction."""
