"""Auto-routing: forwarding complete scans to remotes."""
