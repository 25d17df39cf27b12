"""How the process runs: pinned worker threads, the trace, systemd, and small network helpers."""
