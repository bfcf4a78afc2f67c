"""Every option of one run, with its default, in one place: `RunSettings`.

The command line builds it from flags (its defaults read from here), `run_manifest` from
keyword arguments, tests field by field; the engine reads nothing else. A new run option is a
field here and an option of `avatarbatch run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from avatarbatch.runware.client import ClientSettings
from avatarbatch.sandbox.config import SandboxConfig

#: how long a task the API accepted may answer "not found" (or not be mentioned at all) before
#: it is sent again: the docs say nothing of a registration lag, or of results aging out, and a
#: job failed too early is paid for again by --retry-failed
NOT_FOUND_GRACE = 30.0
#: `run --confirm-above`: a person at a terminal is asked before a real run estimated above it
CONFIRM_ABOVE_USD = 10.0


@dataclass(frozen=True)
class PollTiming:
    """When the poller checks a task, as fractions of its expected render time.

    Submissions share POSTs (submit_queue.py), so polls can be frequent: checked just before
    the expected end and then in small steps, a render is seen soon after it ends, for a
    fraction of a POST per job (bench/README.md, "Reading the figures", A). The expected
    time is learnt per model from finished tasks (engine/poller.py).
    """

    #: first check while nothing is learnt: at this fraction of the model's prior render time
    #: (catalog.AvatarModel.render_prior), a guess, so early; then blind re-checks
    blind_first: float = 0.05
    initial: float = 5.0  #: and at most this many seconds after the task was watched
    blind_step: float = 0.15  #: re-check after this share of the wait, before anything is learnt
    blind_min: float = 0.25  #: and at least this long
    #: once the estimate is sure, a task is checked first at `late` times its expected render
    #: time, found there at once if the estimate is right; every `scout_every`-th task of a
    #: model is checked first at `early` times it instead, so the estimate stays bound from
    #: below and a provider getting faster is noticed
    late: float = 1.01
    early: float = 0.98
    scout_every: int = 4
    #: while the estimate is not yet sure (learnt from one wave only, or its newest tasks were
    #: found only loosely bounded), the first check comes at this fraction of the expected
    #: time and the next ones `probe_ratio` apart up to `early`: a slow first wave that made
    #: the estimate too high is then seen through in one wave, to within the ratio
    probe_from: float = 0.5
    probe_ratio: float = 1.12
    step: float = 0.02  #: re-check interval as a fraction of the expected render time
    min_interval: float = 0.05
    max_interval: float = 10.0
    growth: float = 1.5  #: each further miss waits this much longer
    window: float = 0.04  #: tasks due within this fraction of their expected time share a POST
    #: and tasks due within this fraction of it ride along in a POST sent anyway (they are
    #: found a little early, or keep their own schedule)
    ride: float = 0.1
    history: int = 48  #: finished tasks per model the estimate is learnt from, the newest
    #: the share of recent tasks predicted to take longer than expected: below a half leans
    #: early, since a check too early costs a POST and one too late costs render-slot time
    quantile: float = 0.5
    #: the estimate is sure when its newest tasks were each found within this share of the
    #: time they took (a miss, then a find shortly after)
    sure_width: float = 0.12
    not_found_grace: float = NOT_FOUND_GRACE  #: seconds; see NOT_FOUND_GRACE


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs besides the manifest."""

    client: ClientSettings | None = None  #: the real API; None requires `sandbox`
    sandbox: SandboxConfig | None = None  #: start a local sandbox for this run
    out: Path | None = None  #: the output folder; None: output.dir, or out/NAME
    state: Path | None = None  #: the state file; None: OUT/state.sqlite
    concurrency: int = 4  #: tasks submitted and not yet finished at the provider
    rps: float = 5.0  #: API requests per second, at most
    max_cost: Decimal | None = None  #: what this invocation may submit, in USD
    retry_failed: bool = False  #: run failed jobs again
    job_timeout: float = 3600.0  #: longest wait for one task at the provider, seconds
    generation_attempts: int = 3  #: submissions per job when generations fail transiently
    #: videos downloaded at once: enough to fill a link from a CDN, and few enough that the
    #: HTTP pool stays small (see make_http_client). A job waiting here holds no render slot.
    downloads: int = 8
    poll: PollTiming = field(default_factory=PollTiming)
    poll_batch: int | None = None  #: getResponse tasks per POST; None: the client's own
    only: tuple[str, ...] = ()  #: run just these job ids (the rest stay as they are)
    where: tuple[str, ...] = ()  #: run just the rows whose vars match each VAR=VALUE
    #: asked with the estimate and job count before anything is paid; False stops the run
    confirm: Callable[[Decimal, int], bool] | None = None

    def public(self) -> dict[str, Any]:
        """The settings as stored in the state file and reports: no key, no secrets."""
        return {
            "api_url": self.client.api_url if self.client else None,
            "sandbox": self.sandbox is not None,
            "out": str(self.out) if self.out else None,
            "state": str(self.state) if self.state else None,
            "concurrency": self.concurrency,
            "rps": self.rps,
            "max_cost": str(self.max_cost) if self.max_cost is not None else None,
            "retry_failed": self.retry_failed,
            "poll_batch": self.poll_batch,
            "only": list(self.only),
            "where": list(self.where),
        }


DEFAULTS = RunSettings()


def usd(amount: float | Decimal | None) -> Decimal | None:
    """An amount of money as given on a command line or to `run_manifest`, exactly."""
    return None if amount is None else Decimal(str(amount))
