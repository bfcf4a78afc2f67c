"""The Runware layer, the only code that sees httpx and raw API answers.

- `client`: `RunwareClient` (upload, submit many, poll in batches, download), built from
  `settings` (how to reach the API), `transport` (posting, retries, capped answers),
  `redirects` (which hops to follow), `protocol` (reading answers) and `download`.
- `classify`: API errors into the error tree of `errors.py`.
- `limits`: the adaptive rate limiter every request passes.
- `check` and `findings`: the free probes of `avatarbatch check`, and what they learnt.
"""
