"""index.html: one self-contained page to review a batch's videos in a couple of minutes.

The page sits in the output folder next to `videos/` and must open from a file share, a zip or
an offline laptop, so it loads nothing from the network: the CSS and the few lines of JS are
inline, the charts are inline SVG, and videos are referenced by their relative paths.
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
from pathlib import PurePosixPath
from string import Template
from urllib.parse import quote

from avatarbatch.report.data import (
    DELIVERED,
    MISMATCH_RATIO,
    JobReport,
    ReportData,
    Totals,
    money,
)

STATUS_FILTERS = ("done", "failed", "other")
#: Geometry of the inline SVG bar charts, in user units (the SVG scales to its box).
CHART_WIDTH, LABEL_WIDTH, VALUE_WIDTH, ROW_HEIGHT, BAR_HEIGHT = 420, 110, 92, 24, 14


PAGE_SIZE = 1000  #: cards per page: browsers cope with about this many <video> elements
PAGES_DIR = "gallery"  #: pages after the first, in the output folder


@dataclass(frozen=True)
class GalleryPage:
    path: str  #: relative to the output folder: index.html, then gallery/page-2.html...
    chunks: Iterator[str]


def render_gallery(data: ReportData) -> str:
    """The complete index.html for `data`, if it fits on one page (tests, small batches)."""
    return "".join(next(gallery_pages(data)).chunks)


def page_path(number: int) -> str:
    return "index.html" if number == 1 else f"{PAGES_DIR}/page-{number}.html"


def page_paths(jobs: int, page_size: int | None = None) -> list[str]:
    """The files a gallery of `jobs` cards is written to, relative to the output folder."""
    count = max(1, -(-jobs // (page_size or PAGE_SIZE)))
    return [page_path(number) for number in range(1, count + 1)]


def gallery_pages(data: ReportData, page_size: int | None = None) -> Iterator[GalleryPage]:
    """index.html and, past `page_size` jobs, further pages, each produced piece by piece.

    A batch of 100,000 jobs made one 71 MB page that no browser could open. Every page
    carries the whole batch's summary and charts; its filters act on its own cards.
    """
    slugs = _var_slugs(data.var_names)
    shared = {
        "title": escape(f"{PurePosixPath(data.manifest).name} · avatarbatch gallery"),
        "css": CSS,
        "script": SCRIPT,
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
    page = PAGE.substitute(
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

    shown = sorted({1, count, *range(max(1, number - 3), min(count, number + 3) + 1)})
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
        shown = escape(label if len(label) <= 16 else label[:15] + "…")
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
    """escape() for the few distinct var values, models and statuses 100,000 cards repeat."""
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
    if status == "failed":
        return "No video: the job failed"
    if status == "done":
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
    return status if status in ("done", "failed") else "other"


def _status_class(status: str) -> str:
    return f"s-{_status_group(status)}"


def _money(value: float | None) -> str:
    return money(value, unknown="—")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


CSS = """
:root { --bg: #f5f6f8; --card: #fff; --line: #e2e5ea; --text: #1d2330; --muted: #667085;
  --done: #1a7f4b; --done-bg: #e5f5ec; --failed: #b42318; --failed-bg: #fdecea;
  --other: #8a5a00; --other-bg: #fff4dc; --accent: #3a6ea5; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: var(--bg); color: var(--text); font: 14px/1.45 system-ui,
  -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header, .charts, .filters, .pager, main { max-width: 1400px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; }
header p { margin: 0; }
h1 { margin: 0 0 2px; font-size: 22px; }
h1 small { font-size: 13px; font-weight: 500; color: var(--muted); margin-left: 8px; }
.muted { color: var(--muted); font-weight: normal; }
.stats { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 10px 16px; min-width: 200px; }
.stat > span { display: block; color: var(--muted); font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; }
.stat > b { font-size: 22px; }
.badges { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 4px; }
.badge { border-radius: 999px; padding: 1px 9px; font-size: 12px; white-space: nowrap; }
.s-done { color: var(--done); background: var(--done-bg); }
.s-failed { color: var(--failed); background: var(--failed-bg); }
.s-other { color: var(--other); background: var(--other-bg); }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr));
  gap: 12px; }
.chart { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 10px 14px; }
.chart figcaption { font-weight: 600; margin-bottom: 6px; }
.chart svg { width: 100%; height: auto; font-size: 12px; fill: var(--text); }
.chart .bar { fill: var(--accent); }
.chart .bar.est { fill: #a9c1dc; }
.chart .value { fill: var(--muted); }
.filters { display: flex; flex-wrap: wrap; align-items: center; gap: 12px; margin: 18px auto; }
.pager { margin: 0 auto 18px; color: var(--muted); }
.pager p { margin: 0 0 4px; }
.pager a, .pager b { display: inline-block; padding: 2px 6px; }
.pager a { color: var(--accent); }
.status-filter { display: inline-flex; border: 1px solid var(--line); border-radius: 8px;
  overflow: hidden; background: var(--card); }
.status-filter button { border: 0; border-right: 1px solid var(--line); background: none;
  padding: 6px 12px; font: inherit; cursor: pointer; }
.status-filter button:last-child { border-right: 0; }
.status-filter button[aria-pressed="true"] { background: var(--accent); color: #fff; }
select { font: inherit; padding: 5px 8px; border: 1px solid var(--line); border-radius: 8px;
  background: var(--card); }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 14px;
  padding-bottom: 40px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px;
  overflow: hidden; display: flex; flex-direction: column; }
.card.failed { border-color: #f3c1bc; }
.media { background: #000; display: grid; gap: 2px;
  grid-template-columns: repeat(auto-fit, minmax(120px, 1fr)); }
video, .placeholder { width: 100%; height: 240px; display: block; object-fit: contain; }
.placeholder { display: grid; place-items: center; color: #9aa4b2; text-align: center;
  background: repeating-linear-gradient(45deg, #1f2937 0 12px, #253041 12px 24px); }
.body { padding: 10px 14px 12px; }
.title { display: flex; justify-content: space-between; align-items: center; gap: 8px; }
h2 { font-size: 15px; margin: 0; overflow-wrap: anywhere; }
.chips { display: flex; flex-wrap: wrap; gap: 4px; margin: 6px 0; }
.chip { background: #eef2f7; border-radius: 6px; padding: 1px 7px; font-size: 12px; }
.chip span { color: var(--muted); }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 12px; margin: 8px 0 0; }
dt { color: var(--muted); }
dd { margin: 0; font-variant-numeric: tabular-nums; }
dd.bad { color: var(--other); font-weight: 600; }
.warn { margin: 8px 0 0; padding: 6px 10px; border-radius: 8px; background: var(--other-bg);
  color: var(--other); font-size: 13px; }
.error { margin: 8px 0 0; padding: 8px 10px; border-radius: 8px; background: var(--failed-bg);
  color: var(--failed); border: 1px solid #f3c1bc; white-space: pre-wrap;
  overflow-wrap: anywhere; font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; }
.files { margin: 8px 0 0; font-size: 12px; display: flex; flex-wrap: wrap; gap: 8px; }
.files a { color: var(--accent); }
.playback { color: #fca5a5; font-size: 12px; padding: 4px 8px; }
.empty { color: var(--muted); }
"""

SCRIPT = """
(function () {
  var cards = Array.prototype.slice.call(document.querySelectorAll("article.card"));
  var selects = Array.prototype.slice.call(document.querySelectorAll("select[data-var]"));
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button[data-status]"));
  var status = "all";
  function apply() {
    var shown = 0;
    cards.forEach(function (card) {
      var ok = status === "all" || card.getAttribute("data-status") === status;
      selects.forEach(function (s) {
        if (s.value && card.getAttribute("data-var-" + s.dataset.var) !== s.value) ok = false;
      });
      card.hidden = !ok;
      if (ok) shown += 1;
    });
    document.getElementById("shown").textContent = shown + " of " + cards.length + " shown";
  }
  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      status = b.dataset.status;
      buttons.forEach(function (o) { o.setAttribute("aria-pressed", String(o === b)); });
      apply();
    });
  });
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  apply();

  var videos = document.querySelectorAll("video[data-job]");
  var ready = 0;
  document.body.dataset.videosTotal = videos.length;
  document.body.dataset.videos = 0;
  Array.prototype.forEach.call(videos, function (v) {
    function loaded() {
      if (v.dataset.readyState) return;
      v.dataset.readyState = v.readyState;
      v.dataset.duration = v.duration;
      ready += 1;
      document.body.dataset.videos = ready;
    }
    function failed() {
      if (v.dataset.error) return;
      v.dataset.error = "1";
      var note = document.createElement("div");
      note.className = "playback";
      note.textContent = "This browser cannot play this file" +
        (v.error && v.error.message ? " (" + v.error.message + ")" : "");
      v.insertAdjacentElement("afterend", note);
    }
    v.addEventListener("loadedmetadata", loaded);
    v.addEventListener("error", failed);
    if (v.readyState >= 1) loaded();
    if (v.error) failed();
  });
})();
"""

# Stands in for the cards while the page around them is filled in; every text from the
# manifest or the state is escaped, so a raw `<` can only be ours.
CARDS_MARK = "<avatarbatch-cards/>"
PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>$css</style>
</head>
<body data-videos="0" data-videos-total="$videos_total">
<header>$header</header>
<section class="charts">$charts</section>
<nav class="filters">$filters</nav>
$pager
<main>
$cards
</main>
$empty
<script>$script</script>
</body>
</html>
""")
