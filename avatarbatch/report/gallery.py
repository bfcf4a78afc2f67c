"""index.html: one self-contained page to review a batch's videos in a couple of minutes.

The page sits in the output folder next to `videos/` and must open from a file share, a zip or
an offline laptop, so it loads nothing from the network: the CSS and the few lines of JS
(`gallery.css`, `gallery.js`, shipped beside this module with the page template
`gallery.html`) are copied inline, the charts are inline SVG, and videos are referenced by
their relative paths.
Everything that came from a manifest, a user or the API (ids, vars, error texts, paths) is
HTML-escaped; attribute names built from var names are reduced to a safe slug.

Each `<video>` records whether its metadata loaded (`data-ready-state`, `data-duration`,
`data-error`) and `<body>` counts them (`data-videos` of `data-videos-total`), so a headless
browser can check from the DOM alone that every file really plays.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from importlib import resources
from pathlib import PurePosixPath
from string import Template
from urllib.parse import quote

from avatarbatch.plan import Totals
from avatarbatch.report.data import (
    DELIVERED,
    FINISHED,
    MISMATCH_RATIO,
    JobReport,
    ReportData,
    money,
)
from avatarbatch.state.store import JobStatus

OTHER = "other"  #: the filter and colour of every status but done and failed
STATUS_FILTERS = (*(status.value for status in FINISHED), OTHER)
#: Geometry of the inline SVG bar charts, in user units (the SVG scales to its box).
CHART_WIDTH, LABEL_WIDTH, VALUE_WIDTH, ROW_HEIGHT, BAR_HEIGHT = 420, 110, 92, 24, 14
LABEL_CHARS = 16  #: a chart label longer than this is cut, with an ellipsis
PAGE_SIZE = 1000  #: cards per page: browsers cope with about this many <video> elements
PAGES_DIR = "gallery"  #: pages after the first, in the output folder
PAGER_REACH = 3  #: the pager links this many pages either side of the current one
# Stands in for the cards while the page around them is filled in; every text from the
# manifest or the state is escaped, so a raw `<` can only be ours.
CARDS_MARK = "<avatarbatch-cards/>"


@dataclass(frozen=True)
class GalleryPage:
    path: str  #: relative to the output folder: index.html, then gallery/page-2.html...
    chunks: Iterator[str]


@functools.cache
def asset(name: str) -> str:
    """A file shipped beside this module: `gallery.html` (the page), `.css` or `.js`."""
    return resources.files("avatarbatch.report").joinpath(name).read_text(encoding="utf-8")


def page_path(number: int) -> str:
    return "index.html" if number == 1 else f"{PAGES_DIR}/page-{number}.html"


def page_paths(jobs: int, page_size: int | None = None) -> list[str]:
    """The files a gallery of `jobs` cards is written to, relative to the output folder."""
    count = max(1, -(-jobs // (page_size or PAGE_SIZE)))
    return [page_path(number) for number in range(1, count + 1)]


def gallery_pages(data: ReportData, page_size: int | None = None) -> Iterator[GalleryPage]:
    """index.html and, past `page_size` jobs, further pages, each produced piece by piece.

    One page holding every card of a big batch would be too large for a browser to open.
    Every page carries the whole batch's summary and charts; its filters act on its own cards.
    """
    slugs = _var_slugs(data.var_names)
    shared = {
        "title": escape(f"{PurePosixPath(data.manifest).name} · avatarbatch gallery"),
        "css": asset("gallery.css"),
        "script": asset("gallery.js"),
        "header": _header(data),
        "charts": _charts(data),
        "filters": _filters(data, slugs),
        "empty": "" if data.jobs else '<p class="empty">This manifest has no jobs.</p>',
    }
    page_size = page_size or PAGE_SIZE
    count = len(page_paths(len(data.jobs), page_size))
    for number in range(1, count + 1):
        start = (number - 1) * page_size
        jobs = data.jobs[start : start + page_size]
        pager = _pager(number, count, start + 1, len(jobs), len(data.jobs))
        up = "" if number == 1 else "../"  # later pages sit one folder down
        yield GalleryPage(page_path(number), _page_chunks(jobs, data, slugs, shared, pager, up))


def _page_chunks(
    jobs: list[JobReport],
    data: ReportData,
    slugs: dict[str, str],
    shared: dict[str, str],
    pager: str,
    up: str,
) -> Iterator[str]:
    """One page piece by piece, so its cards are never one string in memory."""
    page = Template(asset("gallery.html")).substitute(
        shared,
        videos_total=sum(len(job.outputs) for job in jobs),
        pager=pager,
        cards=CARDS_MARK,
    )
    before, _, after = page.partition(CARDS_MARK)
    yield before
    for position, job in enumerate(jobs):
        yield ("\n" if position else "") + _card(job, data.var_names, slugs, up)
    yield after


def _pager(number: int, count: int, first_job: int, on_page: int, total_jobs: int) -> str:
    if count == 1:
        return ""

    def link(target: int, text: str) -> str:
        if target == number:
            return f'<b aria-current="page">{text}</b>'
        if number == 1:
            href = page_path(target)
        else:
            href = "../index.html" if target == 1 else PurePosixPath(page_path(target)).name
        return f'<a href="{href}">{text}</a>'

    near = range(max(1, number - PAGER_REACH), min(count, number + PAGER_REACH) + 1)
    shown = sorted({1, count, *near})
    links: list[str] = []
    for previous, target in zip([0, *shown], shown, strict=False):
        if target - previous > 1:
            links.append("<span>…</span>")
        links.append(link(target, str(target)))
    if number > 1:
        links.insert(0, link(number - 1, "« previous"))
    if number < count:
        links.append(link(number + 1, "next »"))
    return (
        f'<nav class="pager" data-page="{number}" data-pages="{count}">'
        f"<p>Page {number} of {count}: jobs {first_job:,} to {first_job + on_page - 1:,} "
        f"of {total_jobs:,}. The filters act on this page.</p>{' '.join(links)}</nav>"
    )


# --- header and charts ------------------------------------------------------------------------


def _header(data: ReportData) -> str:
    name = PurePosixPath(data.manifest).name or data.manifest
    counts = "".join(
        f'<span class="badge {_status_class(status)}">{escape(status)} <b>{n}</b></span>'
        for status, n in sorted(data.counts.items(), key=lambda item: (-item[1], item[0]))
    )
    totals = data.totals
    # Compare like with like: the actual cost against the estimates of the jobs charged so far.
    charged = [j for j in data.jobs if j.actual_cost is not None and j.estimated_cost]
    estimate = sum(j.estimated_cost or 0.0 for j in charged)
    change = ""
    if estimate:
        delta = (sum(j.actual_cost or 0.0 for j in charged) - estimate) / estimate
        change = f"<div>{delta:+.1%} vs estimate on {len(charged)} charged</div>"
    runs = f" · {data.runs} run{'s' if data.runs != 1 else ''}" if data.runs else ""
    return (
        f"<h1>{escape(name)}<small>avatarbatch gallery</small></h1>"
        f'<p class="muted">{escape(data.manifest)} · generated {escape(data.generated_at)}'
        f"{runs}</p>"
        f'<div class="stats"><div class="stat"><span>Jobs</span><b>{totals.jobs}</b>'
        f'<div class="badges">{counts}</div></div>'
        f'<div class="stat"><span>Actual cost</span><b>{_money(totals.actual_cost)}</b>'
        f"<div>of {_money(totals.estimated_cost)} estimated</div>{change}</div>"
        f'<div class="stat"><span>Audio</span><b>{_duration(totals.audio_seconds)}</b>'
        f"<div>{totals.audio_seconds / max(1, totals.jobs):.1f} s per job</div></div></div>"
    )


def _charts(data: ReportData) -> str:
    charts = [_chart(f"Cost by {name}", name, data.by_var.get(name, {})) for name in data.var_names]
    charts.append(_chart("Cost by model", "model", data.by_model))
    return "\n".join(charts)


def _chart(caption: str, key: str, groups: dict[str, Totals]) -> str:
    """A horizontal bar per group: actual cost, or the estimate where nothing was charged."""
    if not groups:
        return ""
    values = {
        label: (t.actual_cost, False) if t.actual_cost else (t.estimated_cost, True)
        for label, t in groups.items()
    }
    top = max((value for value, _ in values.values()), default=0.0) or 1.0
    span = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH
    rows = []
    for i, (label, (value, estimated)) in enumerate(sorted(values.items())):
        y = i * ROW_HEIGHT
        width = max(1.0, span * value / top) if value else 0.0
        shown = escape(label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…")
        tip = escape(f"{label}: {_money(value)}{' estimated' if estimated else ''}")
        rows.append(
            f'<g><title>{tip}</title><text x="{LABEL_WIDTH - 8}" y="{y + 16}" '
            f'text-anchor="end">{shown}</text><rect class="bar{" est" if estimated else ""}" '
            f'x="{LABEL_WIDTH}" y="{y + 5}" width="{width:.1f}" height="{BAR_HEIGHT}" rx="3"/>'
            f'<text x="{LABEL_WIDTH + width + 6:.1f}" y="{y + 16}" class="value">'
            f"{_money(value)}{'*' if estimated else ''}</text></g>"
        )
    height = ROW_HEIGHT * len(rows) + 4
    note = any(estimated for _, estimated in values.values())
    return (
        f'<figure class="chart" data-chart="{escape(key)}"><figcaption>{escape(caption)}'
        f"{' <span class=muted>(* estimate, nothing charged yet)</span>' if note else ''}"
        f'</figcaption><svg viewBox="0 0 {CHART_WIDTH} {height}" role="img" '
        f'aria-label="{escape(caption)}">{"".join(rows)}</svg></figure>'
    )


# --- filters and cards ------------------------------------------------------------------------


def _filters(data: ReportData, slugs: dict[str, str]) -> str:
    seen = [_status_group(job.status) for job in data.jobs]
    buttons = [f'<button type="button" data-status="all" aria-pressed="true">All {len(seen)}']
    buttons += [
        f'<button type="button" data-status="{group}" aria-pressed="false">'
        f"{group.capitalize()} {seen.count(group)}"
        for group in STATUS_FILTERS
    ]
    selects = []
    for name in data.var_names:
        values = sorted({job.vars[name] for job in data.jobs if name in job.vars})
        options = "".join(f'<option value="{escape(v)}">{escape(v)}</option>' for v in values)
        selects.append(
            f'<label>{escape(name)} <select data-var="{slugs[name]}">'
            f'<option value="">all</option>{options}</select></label>'
        )
    return (
        f'<div class="status-filter" role="group" aria-label="Status">'
        f"{'</button>'.join(buttons)}</button></div>{''.join(selects)}"
        f'<span class="muted" id="shown"></span>'
    )


@functools.lru_cache(maxsize=4096)
def _escaped_label(text: str) -> str:
    """escape() for the few distinct var values, models and statuses that every card repeats."""
    return escape(text)


def _card(job: JobReport, var_names: list[str], slugs: dict[str, str], up: str = "") -> str:
    """One job's card; `up` leads from the page's folder back to the output folder."""
    group = _status_group(job.status)
    attrs = "".join(
        f' data-var-{slugs[name]}="{_escaped_label(job.vars[name])}"'
        for name in var_names
        if name in job.vars
    )
    chips = "".join(
        f'<span class="chip"><span>{_escaped_label(k)}</span> {_escaped_label(v)}</span>'
        for k, v in job.vars.items()
    )
    expected = "" if job.audio_seconds is None else str(round(job.audio_seconds, 3))
    job_id = escape(job.id)
    local = [path for path in job.outputs if not path.startswith(DELIVERED)]
    hrefs = [escape(quote(up + path, safe="/")) for path in local]
    media = (
        "".join(
            # `#t=0.5`: browsers then show a frame of the video instead of a black box.
            f'<video controls preload="metadata" src="{href}#t=0.5" '
            f'data-job="{job_id}" data-expected-seconds="{expected}"></video>'
            for href in hrefs
        )
        or f'<div class="placeholder">{_placeholder(job.status)}</div>'
    )
    files = "".join(
        f'<a href="{href}">{escape(path.rpartition("/")[2])}</a>'
        for href, path in zip(hrefs, local, strict=True)
    ) + "".join(
        f"<span>{escape(path)}</span>" for path in job.outputs if path.startswith(DELIVERED)
    )
    mismatch = (
        f'<p class="warn">Actual differs from estimate by more than {MISMATCH_RATIO:.0%}</p>'
        if job.cost_mismatch
        else ""
    )
    error = f'<pre class="error">{escape(job.error)}</pre>' if job.error else ""
    audio = "—" if job.audio_seconds is None else f"{job.audio_seconds:.2f} s"
    return (
        f'<article class="card {group}" data-status="{group}"{attrs}>'
        f'<div class="media">{media}</div><div class="body">'
        f'<div class="title"><h2>{job_id}</h2>'
        f'<span class="badge {_status_class(job.status)}">{_escaped_label(job.status)}</span>'
        f'</div><div class="chips">{chips}</div><dl>'
        f"<dt>Model</dt><dd>{_escaped_label(job.model_alias)}</dd><dt>Audio</dt><dd>{audio}</dd>"
        f"<dt>Estimate</dt><dd>{_money(job.estimated_cost)}</dd>"
        f"<dt>Actual</dt><dd{' class=bad' if job.cost_mismatch else ''}>"
        f"{_money(job.actual_cost)}</dd><dt>Attempts</dt><dd>{job.attempts}</dd></dl>"
        f"{mismatch}{error}{f'<p class=files>{files}</p>' if files else ''}</div></article>"
    )


def _placeholder(status: str) -> str:
    if status == JobStatus.FAILED:
        return "No video: the job failed"
    if status == JobStatus.DONE:
        return "No video file recorded"
    return f"No video yet ({escape(status)})"


# --- small helpers ----------------------------------------------------------------------------


def _var_slugs(names: list[str]) -> dict[str, str]:
    """A distinct, attribute-safe slug per var name, for `data-var-<slug>`."""
    slugs: dict[str, str] = {}
    for i, name in enumerate(names):
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "var"
        if slug in slugs.values():
            slug = f"{slug}-{i}"
        slugs[name] = slug
    return slugs


def _status_group(status: str) -> str:
    return status if status in FINISHED else OTHER


def _status_class(status: str) -> str:
    return f"s-{_status_group(status)}"


def _money(value: float | None) -> str:
    return money(value, unknown="—")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"
