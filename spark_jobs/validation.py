"""Great Expectations over Spark DataFrames: run a suite, route failing rows, write the reports.

A suite is a list of `Check`s (an expectation plus the human reason a failing row gets). The
result names, per check, the ids of the failing rows (GE `unexpected_index_list`), so callers can
quarantine exactly those rows (ingest) or refuse to publish (computed feature tables).

A frame of at most `pandas_max_rows` rows (config `ge_pandas_max_rows`: a daily increment) is
collected and validated by GE's pandas datasource instead of Spark: the same suite, result,
reports and Data Docs page, without the Spark jobs each expectation costs (tens of seconds for a
handful of rows). Timestamps cross as UTC-aware values, as Spark compares them.

Reports, beside `report_dir` (<home>/reports/validation by convention):
  <report_dir>/<suite>.json          the latest result of each suite (GE JSON)
  <reports>/data_docs/index.html     GE Data Docs: every validation ever run, newest first, one
                                     HTML page each (<reports>/data_docs/validations/<suite>/...)
  <reports>/gx/                      the suites and validation results the site is built from
The site is built by an in-memory GE context whose stores are these folders, so it needs no
project set-up and several jobs can add to it (a file lock serialises the writes).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import great_expectations as gx
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import (
    DataContextConfig,
    FilesystemStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
    ValidationResultIdentifier,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger(__name__)
SITE = "mmi"
_CONTEXTS: dict[Path, gx.data_context.AbstractDataContext] = {}  # reports folder -> context
_DEFINITIONS: dict[tuple, Any] = {}  # (context, suite, kind) -> its batch definition
PAGES: list[
    tuple[Path, Path]
] = []  # (reports folder, Data Docs page) of each suite this process ran


@dataclass(frozen=True)
class Check:
    expectation: gx.expectations.Expectation
    reason: str


@dataclass
class SuiteResult:
    name: str
    success: bool
    report_path: Path
    failed_ids: dict[str, list] = field(default_factory=dict)  # reason -> ids of failing rows
    docs_page: Path | None = None  # this validation's Data Docs page


def docs_index(reports: Path) -> Path:
    """The Data Docs site's index page of the reports folder `reports`."""
    return reports / "data_docs" / "index.html"


def docs_note() -> str:
    """' | data docs <index.html>' for a job's summary line once this process validated a suite
    (the index lists this run's validations first)."""
    return f" | data docs {docs_index(PAGES[-1][0])}" if PAGES else ""


def _context(reports: Path):
    """The in-memory GE context of `reports` (one per process): suites and validation results in
    reports/gx, the Data Docs site in reports/data_docs."""
    if reports not in _CONTEXTS:
        config = DataContextConfig(
            store_backend_defaults=FilesystemStoreBackendDefaults(
                root_directory=str(reports / "gx")
            ),
            data_docs_sites={
                SITE: {
                    "class_name": "SiteBuilder",
                    "show_how_to_buttons": False,
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(reports / "data_docs"),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                }
            },
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        _CONTEXTS[reports] = gx.get_context(project_config=config, mode="ephemeral")
    return _CONTEXTS[reports]


@contextmanager
def _locked(reports: Path):
    """Serialise writers of the stores and the site (jobs of one DAG run side by side)."""
    reports.mkdir(parents=True, exist_ok=True)
    with open(reports / ".gx.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _publish(ctx, reports: Path, name: str, result) -> Path:
    """Store `result` and render its page and the index; the page's path."""
    run = RunIdentifier(run_name=os.environ.get("MMI_LOGICAL_DATE") or "manual")
    key = ValidationResultIdentifier(ExpectationSuiteIdentifier(name=name), run, name)
    result.meta["run_id"] = run  # the page's "Run Name" / "Run Time"
    with _locked(reports):
        ctx.validation_results_store.set(key, result)
        ctx.build_data_docs(site_names=[SITE], resource_identifiers=[key])
    [url] = [
        u["site_url"] for u in ctx.get_docs_sites_urls(resource_identifier=key, site_name=SITE)
    ]
    return Path(unquote(urlparse(url).path))


def _batch(ctx, name: str, df: DataFrame, pandas_max_rows: int):
    """The GE batch of `df`: a pandas one when `df` has at most `pandas_max_rows` rows (one Spark
    job collects them). Datasources are registered once per context and kind (each registration
    rewrites the context's config)."""
    head = df.limit(pandas_max_rows + 1).toArrow() if pandas_max_rows > 0 else None
    if head is not None and head.num_rows <= pandas_max_rows:
        frame, kind = head.to_pandas(), "pandas"  # timestamps stay UTC-aware, nulls stay nulls
    else:
        frame, kind = df, "spark"
    key = (id(ctx), name, kind)
    if key not in _DEFINITIONS:
        add = getattr(ctx.data_sources, f"add_or_update_{kind}")
        _DEFINITIONS[key] = (
            add(f"{name}_{kind}")
            .add_dataframe_asset(name)
            .add_batch_definition_whole_dataframe(name)
        )
    return _DEFINITIONS[key].get_batch(batch_parameters={"dataframe": frame})


def _plain(value):
    """A Python scalar for a numpy one (the pandas path's ids), as Spark's rows give."""
    return value.item() if hasattr(value, "item") else value


def run_suite(
    df: DataFrame,
    name: str,
    checks: list[Check],
    id_col: str,
    report_dir: Path,
    pandas_max_rows: int = 0,
) -> SuiteResult:
    """Validate `df` against `checks` (on pandas when it has at most `pandas_max_rows` rows); write
    the GE result JSON to `report_dir/<name>.json` and add the validation to the Data Docs of
    report_dir's parent folder."""
    if len({c.reason for c in checks}) != len(checks):
        raise ValueError(f"suite {name}: each check needs its own reason")
    reports = report_dir.resolve().parent
    ctx = _context(reports)
    batch = _batch(ctx, name, df, pandas_max_rows)
    suite = gx.ExpectationSuite(name=name)
    for check in checks:  # a copy: the stored suite gives its expectations ids, a Check is reusable
        suite.add_expectation(
            check.expectation.copy(update={"id": None, "meta": {"reason": check.reason}})
        )
    with _locked(reports):
        suite = ctx.suites.add_or_update(suite)
    result = batch.validate(
        suite,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_col]},
    )
    failed = {}
    for r in result.results:
        if not r.success:  # an aggregate expectation may fail with no row to blame: empty id list
            failed[r.expectation_config.meta["reason"]] = [
                _plain(row[id_col]) for row in (r.result.get("unexpected_index_list") or [])
            ]
    report_dir.mkdir(parents=True, exist_ok=True)
    report = report_dir / f"{name}.json"
    report.write_text(json.dumps(result.describe_dict(), indent=1, default=str))
    page = _publish(ctx, reports, name, result)
    PAGES.append((reports, page))
    log.info(
        "suite %s: %s (report %s), data docs %s",
        name,
        "passed" if result.success else "FAILED",
        report,
        page,
    )
    return SuiteResult(name, bool(result.success), report, failed, page)


def split_failed(
    df: DataFrame, result: SuiteResult, checks: list[Check], id_col: str
) -> tuple[DataFrame, DataFrame]:
    """(good rows, failing rows with `reason` = first failed check in suite order and all `checks`)."""
    order = {c.reason: i for i, c in enumerate(checks)}
    pairs = [(i, order[reason], reason) for reason, ids in result.failed_ids.items() for i in ids]
    spark = df.sparkSession
    id_type = df.schema[id_col].dataType.simpleString()
    bad = spark.createDataFrame(pairs, f"{id_col} {id_type}, ord int, reason string")
    bad = bad.groupBy(id_col).agg(
        F.sort_array(F.collect_list(F.struct("ord", "reason"))).alias("_r")
    )
    bad = bad.select(
        id_col, F.col("_r")[0]["reason"].alias("reason"), F.col("_r")["reason"].alias("checks")
    )
    good = df.join(F.broadcast(bad), id_col, "left_anti")
    failing = df.join(F.broadcast(bad), id_col, "inner")
    return good, failing
