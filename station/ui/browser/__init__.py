"""The cache browser: local and remote scans, searchable as you type."""
