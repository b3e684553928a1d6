"""Quality reports people can open: every Great Expectations gate adds its validation to the Data
Docs site of the reports folder (index.html linking one HTML page per validation, kept across runs
and processes), and a job's summary line names that index; after materialisation each online
view's freshness (newest row against the window's end) is reported and fails past the configured lag.
"""

from __future__ import annotations

import argparse
import html
import json
import re
from datetime import timedelta

import great_expectations.expectations as gxe
import pandas as pd
import pytest

from feature_repo import commands as feature_commands
from feature_repo import repo
from feature_repo.store_config import open_store
from mminterest import synthetic_tables
from mminterest.config import get_config, load_config
from spark_jobs import commands as job_commands
from spark_jobs.feature_checks import FeatureCheckError, publish_gate
from spark_jobs.job import JobSummary
from spark_jobs.validation import Check, docs_index, run_suite

CHECKS = [
    Check(gxe.ExpectColumnValuesToNotBeNull(column="x"), "missing x"),
    Check(
        gxe.ExpectColumnValuesToBeBetween(column="x", min_value=0, max_value=10), "x out of [0, 10]"
    ),
]


def _links(index) -> set[str]:
    return set(re.findall(r"validations/[^\"'\\ ]+?\.html", index.read_text()))


def _text(page) -> str:
    """The visible text of an HTML page, whitespace collapsed."""
    body = re.sub(r"<(script|style).*?</\1>", " ", page.read_text(), flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def test_every_gate_adds_a_data_docs_page_linked_from_the_index_and_the_summary_line(
    spark, tmp_path, capsys
):
    reports = tmp_path / "reports"
    good = spark.createDataFrame([(1, 1.0), (2, 5.0)], "id long, x double")
    bad = spark.createDataFrame([(1, 1.0), (2, 50.0), (3, None)], "id long, x double")

    passed = run_suite(good, "quality_good", CHECKS, "id", reports / "validation")
    index = docs_index(reports)
    assert passed.success and passed.docs_page.is_file() and index.is_file()
    assert passed.docs_page.is_relative_to(reports / "data_docs" / "validations" / "quality_good")

    # a feature gate that fails names its page; the page shows the failing check
    frame = bad.selectExpr("cast(id as string) as _key", "x")
    cfg = load_config(home=tmp_path)  # reports_dir = tmp_path / "reports"
    with pytest.raises(FeatureCheckError, match=r"data docs .*quality_bad.*\.html") as err:
        publish_gate(frame, "quality_bad", CHECKS, cfg)
    failed_page = next((reports / "data_docs" / "validations" / "quality_bad").rglob("*.html"))
    assert str(failed_page) in str(err.value)
    shown = _text(failed_page)
    assert "Status: Failed" in shown and "Unsuccessful Expectations 2" in shown
    assert "less than or equal to 10.0 . 1 unexpected values found" in shown

    # a second run of the first suite (another process would do the same) keeps both runs listed
    again = run_suite(good, "quality_good", CHECKS, "id", reports / "validation")
    assert again.docs_page != passed.docs_page
    pages = {
        str(p.relative_to(reports / "data_docs"))
        for p in (passed.docs_page, again.docs_page, failed_page)
    }
    assert pages <= _links(index), (pages, _links(index))
    assert json.loads((reports / "validation" / "quality_good.json").read_text())["success"] is True

    # the job's summary line (as `mmi build ...` prints it) links the index
    assert job_commands._gated(lambda: JobSummary("quality", 2, 2, 0.1)) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"quality: rows in 2, rows out 2, 0.1 s | data docs {index}"
    )


@pytest.fixture
def feature_home(tmp_path, monkeypatch):
    """Small synthetic feature tables, applied; `mmi features materialize` sees this home."""
    monkeypatch.setenv("MMI_HOME", str(tmp_path / "mmi"))
    get_config.cache_clear()
    cfg = get_config()
    events = synthetic_tables.random_interactions(
        users=4, items=12, rows=80, days=10, seed=2, start=pd.Timestamp("2020-01-01", tz="UTC")
    )
    newest = pd.Timestamp(events.loc[events["label"] == 1, "event_ts"].max()).tz_convert(
        "UTC"
    )  # of a state
    items = pd.DataFrame(
        {
            "item_id": sorted(events["item_id"].unique()),
            "valid_from_ts": newest - pd.Timedelta(hours=1),
        }
    )  # embedded an hour before
    synthetic_tables.write_tables(cfg, events, {"img": 4, "txt": 3, "fused": 2}, items=items)
    repo.apply(open_store(cfg))
    yield cfg, newest.to_pydatetime()
    get_config.cache_clear()


def _materialize(monkeypatch, end, max_lag_hours: float) -> int:
    monkeypatch.setenv("MMI_MAX_FEATURE_LAG_HOURS", str(max_lag_hours))
    get_config.cache_clear()
    return feature_commands._materialize(argparse.Namespace(full=False, end=end))


def test_freshness_is_reported_per_view_and_fails_past_the_lag(feature_home, monkeypatch, capsys):
    cfg, newest = feature_home
    end = newest + timedelta(hours=3)
    assert _materialize(monkeypatch, end, max_lag_hours=6) == 0
    out = capsys.readouterr().out
    assert "materialize: " in out and "; max_feature_lag_hours=6: ok" in out
    report = json.loads((cfg.reports_dir / "freshness.json").read_text())
    assert [v["view"] for v in report["views"]] == ["item_embeddings", "user_behaviour"]
    assert report["stale"] == []
    lags = {v["view"]: v["lag_hours"] for v in report["views"]}
    assert lags["item_embeddings"] == pytest.approx(4.0) and lags[
        "user_behaviour"
    ] == pytest.approx(3.0)

    # a day later with no new rows: behaviour is 27 h old, past a 24 h limit -> exit 2, named
    code = _materialize(monkeypatch, newest + timedelta(hours=27), max_lag_hours=24)
    captured = capsys.readouterr()
    assert code == 2
    assert (
        "error: stale online features: " in captured.err and "user_behaviour newest" in captured.err
    )
    assert (
        "STALE: " in captured.out
        and "user_behaviour"
        in json.loads((cfg.reports_dir / "freshness.json").read_text())["stale"]
    )
    # no limit configured: reported, never fails
    assert _materialize(monkeypatch, newest + timedelta(days=400), max_lag_hours=0) == 0
    assert "no lag limit: ok" in capsys.readouterr().out
