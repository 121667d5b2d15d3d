"""Remote stores seen from the core: their settings, the frame cache and the query cache."""
