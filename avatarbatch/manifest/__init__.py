"""The manifest layer: reading YAML/CSV rows into validated jobs, with located problems, and
probing their media. Imports nothing above `catalog` and `errors`."""
