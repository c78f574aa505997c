"""The run report, built from a real night (a Prefect flow run on generated logs) and a failed one.

The page is checked twice: its HTML against the warehouse, the model directory and the landing zone (the
numbers a person reads must be the stored ones), and in headless Chromium driven over the DevTools protocol,
which sees every request the page makes: the only ones allowed are the page itself and its inline images.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from test_nightly_flow import CONFIG, corrupt_landing

from jobs.generate import generate
from nightrec.config import load_config
from nightrec.report import TITLES, render_report, training_section

RUN_DATE = date(2026, 11, 1)
FAILED_DATE = date(2026, 11, 2)
PNG = b"\x89PNG\r\n\x1a\n"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def night(tmp_path_factory, spark, prefect_backend):
    """One published night, then a failed one (corrupt logs) on the next date, in the same warehouse."""
    from flows.nightly import nightly
    from jobs.validation import ValidationFailed

    root = tmp_path_factory.mktemp("report")
    generate(root / "landing", users=150, items=60, days=14, seed=5, end_date=RUN_DATE)
    config = root / "config.toml"
    config.write_text(CONFIG.format(root=root, top_k=10).replace("epochs = 2", "epochs = 1"))
    assert nightly(run_date=RUN_DATE, config_path=str(config), show_progress=False)["status"] == "published"

    bad = corrupt_landing(root / "landing", root / "bad-landing")
    with pytest.raises(ValidationFailed):
        nightly(run_date=FAILED_DATE, config_path=str(config), landing=str(bad), show_progress=False)
    return root, config, bad


@pytest.fixture(scope="module")
def report(night):
    path = render_report(load_config(night[1]), RUN_DATE)
    return path, path.read_text()


def sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="(\w+)">(.*?)</section>', html, flags=re.S))


def cell(html: str, key: str, within: str | None = None) -> str:
    """The text of the element carrying data-key=`key` (after the `within` marker, when given)."""
    if within is not None:
        html = html[html.index(within) :]
    match = re.search(rf'data-key="{re.escape(key)}">(.*?)</td>', html, flags=re.S)
    assert match, f"no data-key={key!r}"
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def step_row(html: str, step: str) -> str:
    match = re.search(rf'<tr data-step="{step}">(.*?)</tr>', html, flags=re.S)
    assert match, f"no row for step {step}"
    return match.group(1)


def number(text: str) -> float:
    return float(text.replace(",", "").replace("%", "").strip())


def sql(warehouse: Path, query: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return con.execute(query, params or []).fetchall()


def test_every_section_is_present_with_its_charts(report):
    path, html = report
    assert path.name == "report.html" and path.parent.name == RUN_DATE.isoformat()
    found = sections(html)
    assert list(found) == list(TITLES)
    assert "could not be built" not in html
    assert 'class="missing"' not in html, "a published night has every input"
    for name in ("steps", "volume", "training", "scores"):
        images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', found[name])
        assert images, f"{name} has no chart"
        assert all(base64.b64decode(i).startswith(PNG) for i in images)
    assert len(re.findall("<img ", found["training"])) == 2  # curves and gate weights
    # Nothing is fetched from anywhere: no scheme-relative or http(s) URL, no @import, no url().
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, flags=re.I)
    assert "@import" not in html and "url(" not in html


def test_steps_and_metrics_match_the_runs_row_and_the_model(report, night):
    _, html = report
    root, _, _ = night
    found = sections(html)
    status, version, rows, timings = sql(
        root / "warehouse.duckdb",
        "SELECT status, model_version, row_counts, step_timings FROM runs WHERE run_date = ? "
        "ORDER BY started_at DESC LIMIT 1",
        [RUN_DATE],
    )[0]
    assert cell(found["steps"], "status") == status == "published"
    assert cell(found["steps"], "model_version") == version
    assert number(cell(found["steps"], "rows-recommendations")) == json.loads(rows)["recommendations"]
    for step, seconds in json.loads(timings).items():
        assert f">{seconds:,.2f}</td>" in step_row(found["steps"], step)

    meta = json.loads((root / "work/models" / version / "meta.json").read_text())
    for task, values in meta["metrics"]["tasks"].items():
        row = found["metrics"][found["metrics"].index(f'data-task="{task}"') :]
        assert cell(row, "auc") == f"{values['auc']:,.4f}"
        assert cell(row, "logloss") == f"{values['logloss']:,.4f}"
        assert number(cell(row, "n")) == values["n"]
    # The first night has no champion: the gate published the new model and says why.
    gate = found["metrics"][found["metrics"].index('id="comparison"') :]
    assert "Published the new model" in gate and "first model" in gate
    click_auc = gate[gate.index('data-metric="click.auc"') :]
    assert cell(click_auc, "candidate") == f"{meta['metrics']['tasks']['click']['auc']:,.4f}"
    assert f"{len(meta['history'])} epoch(s)" in found["training"]


def test_volume_and_validation_match_the_landing_zone_and_the_suites(report, night):
    from jobs.validation import events_suite

    path, html = report
    root, config, _ = night
    found = sections(html)
    partitioning = ds.partitioning(pa.schema([("dt", pa.string())]), flavor="hive")
    events = ds.dataset(root / "landing/events", format="parquet", partitioning=partitioning).to_table(
        columns=["event_type"],
        filter=(pc.field("dt") >= (RUN_DATE - timedelta(days=14)).isoformat())
        & (pc.field("dt") < RUN_DATE.isoformat()),
    )
    counts = events.group_by("event_type").aggregate([([], "count_all")]).to_pylist()
    for row in counts:
        assert number(cell(found["volume"], f"window-{row['event_type']}")) == row["count_all"]
    assert number(cell(found["volume"], "window-all")) == events.num_rows

    cfg = load_config(config)
    # The flow checks the partition of each event and its item against the catalogue too (jobs/quarantine.py).
    suite = events_suite(
        cfg, RUN_DATE - timedelta(days=14), RUN_DATE, partition_check=True, catalogue_check=True
    )
    expected = len(suite.expectations)
    events_row = found["validation"][found["validation"].index('data-suite="events"') :]
    assert number(cell(events_row, "evaluated")) == expected
    assert number(cell(events_row, "unsuccessful")) == 0
    assert 'data-suite="examples"' in found["validation"]
    docs = re.search(r'id="data-docs" href="([^"]+)"', found["validation"]).group(1)
    assert docs == "data_docs/index.html" and (path.parent / unquote(docs)).is_file()
    for href in re.findall(r'<a href="([^"#][^"]*)"', found["validation"]):
        assert (path.parent / unquote(href)).is_file(), href


def test_scores_coverage_and_users_match_the_published_rows(report, night):
    _, html = report
    root, _, _ = night
    found = sections(html)
    wh = root / "warehouse.duckdb"
    n, mean_score, max_click, users, items = sql(
        wh,
        "SELECT count(*), avg(score), max(p_click), count(DISTINCT user_id), count(DISTINCT item_id) "
        "FROM recommendations WHERE run_date = ?",
        [RUN_DATE],
    )[0]
    score_row = found["scores"][found["scores"].index('data-column="score"') :]
    assert number(cell(score_row, "n")) == n
    assert cell(score_row, "mean") == f"{mean_score:,.4f}"
    assert cell(found["scores"], "max", within='data-column="p_click"') == f"{max_click:,.4f}"

    catalogue = pq.read_table(root / "work/runs/2026-11-01/features/items").num_rows
    assert number(cell(found["coverage"], "rows")) == n
    assert number(cell(found["coverage"], "users")) == users
    assert number(cell(found["coverage"], "distinct_items")) == items
    assert number(cell(found["coverage"], "catalogue")) == catalogue
    assert number(cell(found["coverage"], "coverage")) == pytest.approx(100 * items / catalogue, abs=0.05)
    created = pd.to_datetime(pq.read_table(root / "landing/items").column("created_at").to_pandas(), utc=True)
    is_new = (created >= pd.Timestamp("2026-10-25", tz="UTC")) & (created < pd.Timestamp(RUN_DATE, tz="UTC"))
    assert number(cell(found["coverage"], "new_items")) == is_new.sum()

    sampled = re.findall(r'data-user="([^"]+)"', found["users"])
    assert len(sampled) == 5 and len(set(sampled)) == 5
    for user in sampled:
        block = found["users"].split(f'data-user="{user}"')[1].split('data-user="')[0]
        top = sql(
            wh,
            "SELECT score FROM recommendations WHERE run_date = ? AND user_id = ? ORDER BY rank",
            [RUN_DATE, user],
        )
        shown = [number(s) for s in re.findall(r'data-key="score">([^<]+)<', block)]
        assert shown == [round(s, 4) for (s,) in top]
    again = sections(render_report(load_config(night[1]), RUN_DATE).read_text())["users"]
    assert re.findall(r'data-user="([^"]+)"', again) == sampled, "the sample of a date is fixed"


def test_a_refit_model_says_its_curves_are_the_held_out_models(report, night):
    root, config, _ = night
    version = sql(root / "warehouse.duckdb", "SELECT model_version FROM runs WHERE run_date = ?", [RUN_DATE])
    meta = json.loads((root / "work/models" / version[0][0] / "meta.json").read_text())
    assert "Refit" not in " ".join(
        training_section(SimpleNamespace(model=(meta, None), cfg=load_config(config))).notes
    )
    twin = f"{meta['version']}.heldout"
    refit = {**meta, "refit": {"epochs": 3, "n_examples": 12345, "history": [], "heldout": twin}}
    notes = " ".join(training_section(SimpleNamespace(model=(refit, None), cfg=load_config(config))).notes)
    assert "3 epochs on all 12,345 examples" in notes and f"{meta['version']}.heldout" in notes


def test_a_failed_run_renders_what_it_can_and_says_what_is_missing(night, tmp_path):
    root, config, bad = night
    out = render_report(load_config(config, landing=str(bad)), FAILED_DATE, tmp_path / "failed.html")
    found = sections(out.read_text())
    assert list(found) == list(TITLES)
    assert cell(found["steps"], "status") == "failed"
    assert ">failed<" in step_row(found["steps"], "validate_events")
    assert ">not run<" in step_row(found["steps"], "train")
    assert "expect_column_values_to_be_in_set" in found["steps"]
    assert "<img " in found["volume"]
    assert "The run stopped on a failed check" in found["validation"]
    assert number(cell(found["validation"], "unsuccessful", within='data-suite="events"')) >= 1
    assert 'data-suite="examples"' not in found["validation"]
    # The Data Docs stay reachable from a report written elsewhere.
    docs = re.search(r'id="data-docs" href="([^"]+)"', found["validation"]).group(1)
    assert (out.parent / unquote(docs)).resolve() == (
        root / "work/runs/2026-11-02/data_docs/index.html"
    ).resolve()
    for name in ("training", "metrics"):
        assert "No model was trained by this run." in found[name] and "<img " not in found[name]
    for name in ("scores", "coverage", "users"):
        assert f"No recommendations are published for {FAILED_DATE} (latest run: failed)." in found[name]
    assert "could not be built" not in out.read_text()


def test_a_date_without_any_run_still_renders(tmp_path):
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs/demo.toml",
        landing=str(tmp_path / "landing"),
        workdir=str(tmp_path / "work"),
        warehouse=str(tmp_path / "warehouse.duckdb"),
    )
    found = sections(render_report(cfg, RUN_DATE).read_text())
    assert list(found) == list(TITLES)
    assert "There is no warehouse yet" in found["steps"]
    assert "No events/ in the landing zone" in found["volume"]
    assert "No recommendations are published" in found["users"]


def test_a_postgresql_warehouse_gives_the_same_report(report, night):
    """The same night published to PostgreSQL instead of DuckDB: every section reads the same."""
    from test_warehouse import require_postgres, scratch_schema

    from jobs.warehouse import RUN_COLUMNS, RunRecord, open_warehouse

    path, html = report
    root, config, _ = night
    with duckdb.connect(str(root / "warehouse.duckdb"), read_only=True) as con:
        run = con.execute(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE run_date = ? ORDER BY started_at DESC LIMIT 1",
            [RUN_DATE],
        ).fetchone()
        recs = con.execute(
            "SELECT * EXCLUDE (run_date) FROM recommendations WHERE run_date = ?", [RUN_DATE]
        ).df()
    record = dict(zip(RUN_COLUMNS, run, strict=True))
    record.update({k: json.loads(record[k]) for k in ("metrics", "row_counts", "step_timings")})

    admin_url = require_postgres()
    with scratch_schema(admin_url) as schema:
        url = f"{admin_url}?schema={schema}"
        with open_warehouse(url) as pg:
            pg.ensure_schema(["click", "purchase"])
            pg.publish(RUN_DATE, recs, RunRecord(**record))
        cfg = load_config(config, warehouse=url)
        # Next to the DuckDB report, so that the relative links are the same too.
        pg_html = render_report(cfg, RUN_DATE, path.with_name("report-postgres.html")).read_text()
    duck, pg = sections(html), sections(pg_html)
    for name in TITLES:
        assert pg[name] == duck[name], f"section {name} differs between DuckDB and PostgreSQL"


# -- in a browser -----------------------------------------------------------------------------------------


def browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on PATH (.ci/ensure-chromium installs Debian's where it can)")


class DevTools:
    """A minimal Chrome DevTools Protocol client over the browser's websocket (one page session)."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None)
        self.next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]
            self.events.append(reply)

    def page(self, method: str, **params) -> dict:
        return self.call(method, session=self.session, **params)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))


@pytest.fixture
def chromium(tmp_path):
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().split("\n")) >= 2):
            assert process.poll() is None, "chromium exited at start-up"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port, ws_path = port_file.read_text().split("\n")[:2]
        client = DevTools(f"ws://127.0.0.1:{port}{ws_path}")
        yield client
        client.ws.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_report_renders_offline_in_chromium(report, chromium, tmp_path):
    path, _ = report
    for domain in ("Network", "Page", "Log"):
        chromium.page(f"{domain}.enable")
    chromium.page("Page.navigate", url=path.as_uri())
    chromium.wait_for("Page.loadEventFired")

    requested = [
        e["params"]["request"]["url"]
        for e in chromium.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested and requested[0] == path.as_uri()
    assert all(url.startswith(("file:", "data:")) for url in requested), requested
    failed = [e["params"] for e in chromium.events if e.get("method") == "Network.loadingFailed"]
    assert not failed, failed
    errors = [e["params"]["entry"] for e in chromium.events if e.get("method") == "Log.entryAdded"]
    assert not [e for e in errors if e["level"] == "error"], errors

    state = json.loads(
        chromium.page(
            "Runtime.evaluate",
            expression="JSON.stringify({"
            "sections: [...document.querySelectorAll('section')].map(s => [s.id, s.innerText.length]),"
            "images: [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])})",
        )["result"]["value"]
    )
    assert [name for name, _ in state["sections"]] == list(TITLES)
    assert all(length > 100 for _, length in state["sections"]), state["sections"]
    assert len(state["images"]) >= 5 and all(ok for _, ok in state["images"]), state["images"]

    height = chromium.page("Page.getLayoutMetrics")["cssContentSize"]["height"]
    chromium.page(
        "Emulation.setDeviceMetricsOverride",
        width=1280,
        height=int(height),
        deviceScaleFactor=1,
        mobile=False,
    )
    shot = base64.b64decode(chromium.page("Page.captureScreenshot", format="png")["data"])
    (tmp_path / "report.png").write_bytes(shot)
    assert shot.startswith(PNG) and len(shot) > 50_000
