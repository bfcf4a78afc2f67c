"""The Runware layer: the HTTP client, the classification of its answers, rate limits and the
free probes of `avatarbatch check`. The only code that sees httpx and raw API answers."""
