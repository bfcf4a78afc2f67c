"""The engine layer: one run end to end (where it lives, what it selects, the runner and its
stages, budget, polling, downloads and their verification). Starts the sandbox only when a run
asks for it, so importing the engine loads no web server."""
