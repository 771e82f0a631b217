"""The three user stories in a real browser (Debian's Chromium driven by Playwright), against the
app started as a subprocess on a free localhost port, on the `tiny` model."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.browser
SHOTS = ROOT / "test-output" / "screenshots"
DATABASES: dict = {}  # app url -> the database its server reads


def _chromium() -> str:
    path = (
        os.environ.get("FORGETTING_LAB_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if not path:
        pytest.fail("Chromium is not installed; `make test` installs Debian's chromium package")
    return path


def _start_app(db):
    """Start the app on a free localhost port, reading `db`; yields its url."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = dict(os.environ, FORGETTING_LAB_DB=str(db))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    DATABASES[url] = db
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the app did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def app_url(lab_home, tmp_path_factory):
    yield from _start_app(tmp_path_factory.mktemp("browser") / "lab.duckdb")


@pytest.fixture
def fresh_app_url(lab_home, tmp_path_factory):
    """A server of its own that no session has used yet."""
    yield from _start_app(tmp_path_factory.mktemp("fresh") / "lab.duckdb")


@pytest.fixture
def finished_run(app_url):
    """A finished tiny-test sweep (scales 4, 8, 16, adapters saved) in the app's database: the
    one story 1 launched when it ran before, else one trained here. Each story that reads results
    asks for it, so none depends on running after story 1."""
    from core import runner
    from core.config import preset
    from core.store import Store

    store = Store(DATABASES[app_url])
    runs = store.list_runs()
    done = runs[(runs.status == "done") & (runs.points_done == 3)] if not runs.empty else runs
    if not done.empty:
        return done.run_id.iloc[0]
    run_id = runner.create_run(store, preset("tiny-test"), status="running")
    assert runner.run_foreground(store, run_id) == "done"
    return run_id


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=_chromium(),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _shot(pg, name):
    time.sleep(1.5)  # let charts finish drawing
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _select(pg, label, option):
    pg.get_by_role("combobox", name=label).click()
    pg.get_by_role("option", name=option, exact=True).click()


def test_deep_link_on_a_fresh_server_goes_through_the_app(page, fresh_app_url):
    """On a server no session has used yet (its own): a bookmarked page must still get the
    app's navigation and sidebar, not Streamlit's file list (app, ui, ...)."""
    page.goto(fresh_app_url + "/methods")
    expect_title = page.get_by_role("heading", name="Methods", exact=True)
    expect_title.wait_for()
    nav = page.get_by_test_id("stSidebarNav")
    nav.get_by_text("Launch", exact=True).wait_for()
    assert nav.get_by_text("ui", exact=True).count() == 0
    assert page.get_by_text("in the lab home").count() == 1  # app.py's sidebar ran
    _shot(page, "00-deep-link-fresh-server")


def test_story_1_launch_a_run_and_watch_it_finish(page, app_url):
    from core.store import Store

    store = Store(DATABASES[app_url])  # the story starts in an empty lab
    for run_id in store.list_runs().run_id:
        store.delete_run(run_id)
    page.goto(app_url)
    page.get_by_text("Welcome").wait_for()
    _shot(page, "01-launch-empty")
    page.get_by_text("New run").click()
    _select(page, "Preset", "tiny-test")
    from playwright.sync_api import expect

    expect(page.get_by_role("textbox", name="Dataset sizes")).to_have_value("4, 8, 16")
    time.sleep(1)  # the rerun that rebuilt the form has settled
    page.get_by_role("button", name="Queue run").click()
    page.get_by_text(re.compile(r"^Queued 1 run")).wait_for()
    # The run's progress comes first: above the (now folded) form, with one ETA for the run.
    # Until the rerun after the click has replaced the page, Streamlit keeps the previous
    # render's elements: for a moment the old "Progress" heading below the form and the new one
    # above it are both there. Wait until the stale one is gone.
    headings = page.get_by_role("heading", name="Progress", exact=True)
    expect(headings).to_have_count(1, timeout=20_000)
    progress = headings.first
    form = page.get_by_text("New run", exact=True).first

    def progress_above_form() -> bool:
        return progress.bounding_box()["y"] < form.bounding_box()["y"]

    deadline = time.monotonic() + 20
    while not progress_above_form() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert progress_above_form()
    page.get_by_text(re.compile(r"^Whole run: \d+ of 3 points done")).first.wait_for()
    _shot(page, "02a-launch-started")
    page.get_by_text("Whole run: 3 of 3 points done").first.wait_for(timeout=180_000)
    page.get_by_text("Status: done").first.wait_for()
    # The sidebar's run list agrees with the panel (it refreshes with it).
    page.get_by_test_id("stSidebar").get_by_text("none active").wait_for(timeout=10_000)
    _shot(page, "02-launch-done")


def test_story_2_slider_changes_the_reading(page, app_url, finished_run):
    page.goto(app_url + "/threshold")
    value = page.locator("[data-testid='stMetricValue']").first
    value.wait_for()
    label = page.locator("[data-testid='stMetricLabel']").first
    before = label.inner_text() + value.inner_text()
    _shot(page, "03-threshold")
    thumb = page.get_by_role("slider").first
    thumb.focus()
    thumb.press("End")
    page.wait_for_function(
        "b => { const l = document.querySelector(\"[data-testid='stMetricLabel']\");"
        " const v = document.querySelector(\"[data-testid='stMetricValue']\");"
        " return l && v && (l.innerText + v.innerText) !== b; }",
        arg=before,
    )
    assert "16 samples" in label.inner_text()
    _shot(page, "04-threshold-slider-moved")


def test_story_3_prompt_base_and_adapted(page, app_url, finished_run):
    page.goto(app_url + "/smoke_test")
    box = page.locator("textarea").first
    box.wait_for()
    box.fill("The court held that")
    page.get_by_role("button", name="Generate").click()
    verdict = page.get_by_text(
        re.compile(
            r"^(Passed the smoke check: \d+ new tokens.*|Smoke test failed: \d+ new tokens.*)$"
        )
    )
    try:
        verdict.nth(1).wait_for(timeout=120_000)
    finally:
        _shot(page, "05-smoke-test")
    assert verdict.count() == 2
    assert page.get_by_text("Base model", exact=True).count() == 1
    assert page.get_by_text(re.compile("^After fine-tuning on")).count() == 1


@pytest.mark.parametrize("name", ["phases", "cross_domain", "methods", "runs"])
def test_other_pages_render(page, app_url, name, finished_run):
    page.goto(f"{app_url}/{name}")
    page.locator("h1").first.wait_for()
    page.locator(".js-plotly-plot, [data-testid='stDataFrame']").first.wait_for()
    assert page.get_by_text("Traceback").count() == 0
    _shot(page, f"06-{name}")


def test_a_looping_answer_is_flagged_with_its_reason(page, app_url):
    """A stored answer that loops off-topic (issue 18's 'The trial court remanded ...') is shown
    failed, with the verdict's reason, next to the base model's answer."""
    from core import evaluate, runner
    from core.config import preset
    from core.store import PointResult, Store

    store = Store(DATABASES[app_url])
    run_id = runner.create_run(store, preset("tiny-test", scales=(4,), seeds=(0,)), "done")
    prompt = "The capital of France is"
    loop = " The trial court remanded the deposition transcripts." * 4
    base = evaluate.Generation.judged(prompt, " Paris.", 3)
    bad = evaluate.Generation.judged(prompt, loop, 40)
    assert base.ok and not bad.ok
    store.save_base_generations(run_id, [base.__dict__])
    metrics = dict(
        general_ppl_before=10.0,
        general_ppl_after=30.0,
        degradation_pct=200.0,
        domain_ppl_before=50.0,
        domain_ppl_after=5.0,
        domain_improvement_pct=90.0,
        smoke_ok=False,
        steps=4,
    )
    store.save_point(run_id, PointResult(4, 0, "done", metrics, [], [], [bad.__dict__]))
    store.set_status(run_id, "done")
    try:
        page.goto(app_url + "/threshold")
        page.get_by_text("Stored smoke-test generations").wait_for()
        page.get_by_text(re.compile("repetition loop")).first.wait_for()
        _shot(page, "04b-threshold-loop-flagged")
    finally:
        store.delete_run(run_id)  # the other tests' run pickers see the database as before


# The screen position of every point of the Pareto chart (from Plotly's own axes), with the run
# id the point carries (customdata[2], see charts.pareto_figure).
_PARETO_POINTS = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  if (!gd || !gd.calcdata || !gd._fullLayout) return null;
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.getBoundingClientRect();
  const out = [];
  for (const cd of gd.calcdata) {
    const t = cd[0].trace;
    if (!t.customdata || t.mode !== 'markers') continue;
    cd.forEach((p, i) => {
      if (!isFinite(p.x) || !isFinite(p.y)) return;
      out.push({run_id: String(t.customdata[i][2]),
                px: box.left + xa._offset + xa.l2p(p.x),
                py: box.top + ya._offset + ya.l2p(p.y)});
    });
  }
  return out;
}"""


def test_pareto_click_a_point_to_see_its_generations(page, app_url, finished_run):
    """Issue 21: a click on a point of the Pareto chart shows that point's stored smoke-test
    answers (the base model's and the fine-tuned one's) below the chart."""
    page.goto(app_url + "/pareto")
    page.get_by_role("heading", name="Pareto explorer").wait_for()
    page.get_by_text("Click a point in the chart").wait_for()
    chart = page.locator(".js-plotly-plot").first
    chart.scroll_into_view_if_needed()
    time.sleep(1.5)  # let the chart finish drawing
    pts = page.evaluate(_PARETO_POINTS)
    assert pts, "no points found in the Pareto chart"
    own = [p for p in pts if p["run_id"] == finished_run]
    assert own, "the finished run's points are not in the chart"

    def room(p):  # distance to the nearest point of another run: click the loneliest own point
        return min(
            [
                ((p["px"] - q["px"]) ** 2 + (p["py"] - q["py"]) ** 2) ** 0.5
                for q in pts
                if q["run_id"] != p["run_id"]
            ]
            or [1e9]
        )

    target = max(own, key=room)
    page.mouse.move(target["px"], target["py"])
    time.sleep(0.3)  # Plotly picks the hovered point on click
    page.mouse.click(target["px"], target["py"])
    try:
        page.get_by_text("Stored smoke-test generations").wait_for(timeout=30_000)
        page.get_by_text(re.compile(r"samples · your run")).wait_for()
        answers = page.get_by_test_id("stTable")
        answers.first.wait_for()
        assert "The capital of France is" in answers.first.inner_text()
        assert page.get_by_text("Traceback").count() == 0
        answers.first.scroll_into_view_if_needed()  # the screenshot shows the answers
    finally:
        _shot(page, "07-pareto-clicked-point")
