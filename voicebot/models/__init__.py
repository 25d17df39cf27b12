"""Model files: where they are (paths), where they come from (registry), and fetching them (fetch)."""
