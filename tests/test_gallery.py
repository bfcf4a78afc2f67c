"""The HTML gallery: self-contained, escaped, filterable, and its videos really play.

The browser test renders real videos with the sandbox renderer, opens index.html in headless
Chromium (`--dump-dom`) and reads back what the page's own script recorded on each <video>:
a media element delays the document's load event until its first frame is available (or it
fails), so the dumped DOM already holds `data-ready-state`/`data-duration` or `data-error`.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from avatarbatch.plan import Totals
from avatarbatch.report.data import JobReport, ReportData
from avatarbatch.report.gallery import gallery_pages
from avatarbatch.sandbox.render import OutputFormat, render_video
from conftest import DEMO

EVIL = '<script>alert("x")</script>'


def job(
    id: str,
    status: str = "done",
    *,
    lang: str = "en",
    model: str = "standard",
    seconds: float | None = 5.0,
    outputs: list[str] | None = None,
    estimate: float | None = 0.1,
    actual: float | None = 0.1,
    error: str | None = None,
    mismatch: bool = False,
) -> JobReport:
    return JobReport(
        id=id,
        vars={"lang": lang},
        model=f"klingai:{model}",
        model_alias=model,
        status=status,
        audio_seconds=seconds,
        results=len(outputs or []),
        estimated_cost=estimate,
        actual_cost=actual,
        attempts=1,
        task_uuid=None,
        outputs=[f"videos/{id}.mp4"] if outputs is None and status == "done" else outputs or [],
        sha256=[],
        error=error,
        cost_mismatch=mismatch,
    )


def render_gallery(data: ReportData) -> str:
    """The first page of the gallery, whole: all of it for these small reports."""
    return "".join(next(gallery_pages(data)).chunks)


def report(*jobs: JobReport) -> ReportData:
    """ReportData with the totals build_report would compute for `jobs`."""
    var_names = sorted({name for j in jobs for name in j.vars})
    data = ReportData(
        manifest="/work/manifests/launch.yaml",
        manifest_sha256="0" * 64,
        output_dir=Path("/out"),
        generated_at="2026-11-25T09:00:00Z",
        jobs=list(jobs),
        counts={},
        totals=Totals(),
        by_model={},
        by_var={},
        var_names=var_names,
    )
    data.tally()
    return data


class Elements(HTMLParser):
    """Every start tag as (tag, attrs, data-chart of the enclosing <figure>)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None], str | None]] = []
        self.chart: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "figure":
            self.chart = found.get("data-chart")
        self.found.append((tag, found, self.chart))

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.chart = None


def elements(page: str) -> list[tuple[str, dict[str, str | None], str | None]]:
    parser = Elements()
    parser.feed(page)
    return parser.found


def sample() -> ReportData:
    return report(
        job("host-en", lang="en"),
        job("host-es", lang="es", model="pro", actual=0.2, mismatch=True),
        job("host-de", "failed", lang="de", actual=None, error="Audio too short: 1.2 s < 2 s"),
        job("host-fr", "processing", lang="fr", actual=None),
    )


# --- unit tests on the HTML ---------------------------------------------------------------------


def test_gallery_is_self_contained() -> None:
    page = render_gallery(sample())
    refs = [v for _, attrs, _ in elements(page) for k, v in attrs.items() if k in ("src", "href")]
    assert refs, "expected video and link references"
    for ref in refs:
        assert ref is not None
        assert not re.match(r"(?i)^\s*(https?:|//|data:|javascript:)", ref), ref
    assert "<link" not in page and "@import" not in page and "@font-face" not in page
    assert "url(" not in page
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")


def test_gallery_has_one_card_per_job_with_its_details() -> None:
    data = sample()
    page = render_gallery(data)
    cards = [attrs for tag, attrs, _ in elements(page) if tag == "article"]
    assert [c["data-status"] for c in cards] == ["done", "done", "failed", "other"]
    assert [c["data-var-lang"] for c in cards] == ["en", "es", "de", "fr"]
    assert "host-en" in page and "$0.10000" in page and "$0.20000" in page
    assert "manifests/launch.yaml" in page and "2026-11-25T09:00:00Z" in page
    assert '<span class="chip"><span>lang</span> en</span>' in page


def test_failed_job_shows_its_error_and_a_placeholder() -> None:
    page = render_gallery(sample())
    assert '<pre class="error">Audio too short: 1.2 s &lt; 2 s</pre>' in page
    assert "No video: the job failed" in page
    assert "No video yet (processing)" in page
    videos = [attrs for tag, attrs, _ in elements(page) if tag == "video"]
    assert [v["data-job"] for v in videos] == ["host-en", "host-es"]


def test_cost_mismatch_is_marked() -> None:
    page = render_gallery(sample())
    assert page.count("Actual differs from estimate by more than 10%") == 1
    assert "<dd class=bad>$0.20000</dd>" in page


def test_user_text_is_escaped() -> None:
    data = report(
        job(EVIL, "failed", lang=EVIL, error=EVIL, outputs=[]),
        job("ok", lang='"><img src=x onerror=alert(1)>'),
    )
    page = render_gallery(data)
    assert page.count("<script") == 1  # only the page's own script
    assert "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    chart_labels = [a for tag, a, chart in elements(page) if chart == "lang" and tag == "rect"]
    assert len(chart_labels) == 2


def test_video_sources_are_relative_and_quoted() -> None:
    data = report(job("a", outputs=["videos/a b#1.webm", "videos/a?.mp4"], seconds=5.486))
    videos = [attrs for tag, attrs, _ in elements(render_gallery(data)) if tag == "video"]
    assert [v["src"] for v in videos] == ["videos/a%20b%231.webm#t=0.5", "videos/a%3F.mp4#t=0.5"]
    for v in videos:
        assert v["data-job"] == "a" and v["data-expected-seconds"] == "5.486"
        assert "controls" in v and v["preload"] == "metadata"


def test_filters_exist_for_status_and_each_var() -> None:
    data = report(
        job("a", lang="en"),
        job("b", lang="es"),
        replace(job("c"), vars={"lang": "de", "Voice Tone": "warm"}),
    )
    page = render_gallery(data)
    found = elements(page)
    selects = [attrs["data-var"] for tag, attrs, _ in found if tag == "select"]
    assert selects == ["voice-tone", "lang"]  # var_names sorted: "Voice Tone" < "lang"
    options = [attrs["value"] for tag, attrs, _ in found if tag == "option"]
    assert options == ["", "warm", "", "de", "en", "es"]
    statuses = [attrs["data-status"] for tag, attrs, _ in found if tag == "button"]
    assert statuses == ["all", "done", "failed", "other"]
    assert 'data-var-voice-tone="warm"' in page


def test_charts_have_one_bar_per_var_value_and_model() -> None:
    found = elements(render_gallery(sample()))
    bars: dict[str, int] = {}
    for tag, attrs, chart in found:
        if tag == "rect" and chart is not None and "bar" in (attrs.get("class") or ""):
            bars[chart] = bars.get(chart, 0) + 1
    assert bars == {"lang": 4, "model": 2}
    # No actual cost for de and fr: their bars show the estimate, drawn differently.
    estimated = [a for tag, a, chart in found if chart == "lang" and a.get("class") == "bar est"]
    assert len(estimated) == 2


def test_a_long_batch_is_paged_and_every_page_finds_its_videos() -> None:
    data = report(*(job(f"job-{i}") for i in range(5)))
    pages = list(gallery_pages(data, page_size=2))
    assert [p.path for p in pages] == ["index.html", "gallery/page-2.html", "gallery/page-3.html"]
    html = ["".join(p.chunks) for p in pages]
    found = [elements(page) for page in html]
    sources = [[a["src"] for tag, a, _ in page if tag == "video"] for page in found]
    assert sources == [
        ["videos/job-0.mp4#t=0.5", "videos/job-1.mp4#t=0.5"],
        ["../videos/job-2.mp4#t=0.5", "../videos/job-3.mp4#t=0.5"],
        ["../videos/job-4.mp4#t=0.5"],
    ]
    pager_links = [
        [a["href"] for tag, a, _ in page if tag == "a" and str(a["href"]).endswith(".html")]
        for page in found
    ]
    assert pager_links == [
        ["gallery/page-2.html", "gallery/page-3.html", "gallery/page-2.html"],
        ["../index.html", "../index.html", "page-3.html", "page-3.html"],
        ["page-2.html", "../index.html", "page-2.html"],
    ]
    assert "Page 2 of 3: jobs 3 to 4 of 5." in html[1]
    assert all(page.count('class="badge') > 0 for page in html)  # the summary on every page


def test_a_short_batch_is_one_page_without_a_pager() -> None:
    assert 'class="pager"' not in render_gallery(sample())
    assert len(list(gallery_pages(sample(), page_size=4))) == 1


def test_empty_report_still_renders() -> None:
    page = render_gallery(report())
    assert "This manifest has no jobs." in page and 'data-videos-total="0"' in page


# --- the browser test ---------------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--allow-file-access-from-files",
    "--autoplay-policy=no-user-gesture-required",
    "--virtual-time-budget=10000",
]


def dump_dom(page: Path, profile: Path, timeout: float = 60.0) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/ensure_chromium.sh installs it)")
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0 and "<body" in result.stdout, result.stderr[-2000:]
    return result.stdout


async def test_videos_play_in_headless_chromium(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (scripts/ensure_chromium.sh installs it)")
    portrait, voices = DEMO / "media" / "presenter.png", DEMO / "media" / "voices"
    seconds = {"en": 5.486, "es": 6.008}  # probe_audio's lengths of the demo voices
    renders: list[tuple[str, str, OutputFormat]] = [
        ("webm-en", "en", "WEBM"),
        ("webm es", "es", "WEBM"),  # a space in the file name: the src must be quoted
        ("mp4-en", "en", "MP4"),
        ("mov-es", "es", "MOV"),
    ]
    await asyncio.gather(
        *(
            render_video(
                portrait,
                voices / f"{lang}.mp3",
                seconds[lang],
                fmt,
                tmp_path / "videos" / f"{name}.{fmt.lower()}",
                max_side=320,
            )
            for name, lang, fmt in renders
        )
    )
    jobs = [
        job(name, lang=lang, seconds=seconds[lang], outputs=[f"videos/{name}.{fmt.lower()}"])
        for name, lang, fmt in renders
    ]
    jobs.append(
        job("both", lang="en", seconds=5.486, outputs=["videos/webm-en.webm", "videos/mp4-en.mp4"])
    )
    jobs.append(job("broken", "failed", lang="es", actual=None, outputs=[], error=EVIL))
    page = tmp_path / "index.html"
    page.write_text(render_gallery(report(*jobs)), encoding="utf-8")

    dom = dump_dom(page, tmp_path / "profile")

    found = elements(dom)
    body = next(attrs for tag, attrs, _ in found if tag == "body")
    videos = [attrs for tag, attrs, _ in found if tag == "video"]
    assert body["data-videos-total"] == "6" and body["data-videos"] == "6", body
    assert sorted({v["data-job"] or "" for v in videos}) == sorted(
        j.id for j in jobs if j.status == "done"
    )
    for video in videos:
        assert "data-error" not in video, video
        assert int(video["data-ready-state"] or 0) >= 1, video
        duration = float(video["data-duration"] or "nan")
        expected = float(video["data-expected-seconds"] or "nan")
        assert abs(duration - expected) <= 0.2, video
    # The filter script ran too, and the failed job's error arrived as text, not markup.
    assert "6 of 6 shown" in dom and dom.count("<script") == 1


def test_a_missing_video_is_reported_as_an_error(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (scripts/ensure_chromium.sh installs it)")
    page = tmp_path / "index.html"
    page.write_text(render_gallery(report(job("gone", outputs=["videos/gone.webm"]))))
    found = elements(dump_dom(page, tmp_path / "profile"))
    body = next(attrs for tag, attrs, _ in found if tag == "body")
    video = next(attrs for tag, attrs, _ in found if tag == "video")
    assert video.get("data-error") == "1" and "data-ready-state" not in video
    assert body["data-videos"] == "0" and body["data-videos-total"] == "1"


def test_filters_hide_cards_in_chromium(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (scripts/ensure_chromium.sh installs it)")
    data = report(
        job("a", lang="en", outputs=[]),
        job("b", lang="es", outputs=[]),
        job("c", "failed", lang="es", outputs=[]),
        job("d", "processing", lang="en"),
    )
    # Drive the page's own controls from a script appended after it, and record what shows.
    probe = """<script>
    function shown() {
      return Array.from(document.querySelectorAll("article.card")).filter(function (a) {
        return !a.hidden; }).map(function (a) { return a.querySelector("h2").textContent; });
    }
    var lang = document.querySelector('select[data-var="lang"]');
    lang.value = "es"; lang.dispatchEvent(new Event("change"));
    document.body.dataset.es = shown();
    document.querySelector('button[data-status="failed"]').click();
    document.body.dataset.esFailed = shown();
    lang.value = ""; lang.dispatchEvent(new Event("change"));
    document.querySelector('button[data-status="other"]').click();
    document.body.dataset.other = shown() + "|" + document.getElementById("shown").textContent;
    </script></body>"""
    page = tmp_path / "index.html"
    page.write_text(render_gallery(data).replace("</body>", probe))
    found = elements(dump_dom(page, tmp_path / "profile"))
    body = next(attrs for tag, attrs, _ in found if tag == "body")
    assert body["data-es"] == "b,c"
    assert body["data-es-failed"] == "c"
    assert body["data-other"] == "d|1 of 4 shown"
