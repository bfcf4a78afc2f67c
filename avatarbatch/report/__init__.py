"""The report layer: cost CSV, JSON, Markdown, the gallery and failures.yaml, from the state."""
