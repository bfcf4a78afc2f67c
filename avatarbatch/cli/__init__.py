"""The command line: typer commands (`commands.py`) and their wiring, rendering and progress."""
