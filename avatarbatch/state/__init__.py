"""The state layer: the SQLite state file (jobs, ledger, owned files, runs) and its lock."""
