"""Great Expectations over Spark DataFrames: run a suite, route failing rows, write the report.

A suite is a list of `Check`s (an expectation plus the human reason a failing row gets). The
result names, per check, the ids of the failing rows (GE `unexpected_index_list`), so callers can
quarantine exactly those rows (ingest) or refuse to publish (computed feature tables).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import great_expectations as gx
from great_expectations.data_context.types.base import ProgressBarsConfig
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger(__name__)


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


def run_suite(df: DataFrame, name: str, checks: list[Check], id_col: str, report_dir: Path) -> SuiteResult:
    """Validate `df` against `checks`; write the GE result JSON to `report_dir/<name>.json`."""
    if len({c.reason for c in checks}) != len(checks):
        raise ValueError(f"suite {name}: each check needs its own reason")
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (ctx.data_sources.add_spark(name).add_dataframe_asset(name)
             .add_batch_definition_whole_dataframe(name).get_batch(batch_parameters={"dataframe": df}))
    suite = gx.ExpectationSuite(name=name)
    for check in checks:
        check.expectation.meta = {"reason": check.reason}
        suite.add_expectation(check.expectation)
    result = batch.validate(suite, result_format={
        "result_format": "COMPLETE", "unexpected_index_column_names": [id_col]})
    failed = {}
    for r in result.results:
        if not r.success:  # an aggregate expectation may fail with no row to blame: empty id list
            failed[r.expectation_config.meta["reason"]] = [
                row[id_col] for row in (r.result.get("unexpected_index_list") or [])]
    report_dir.mkdir(parents=True, exist_ok=True)
    report = report_dir / f"{name}.json"
    report.write_text(json.dumps(result.describe_dict(), indent=1, default=str))
    log.info("suite %s: %s (report %s)", name, "passed" if result.success else "FAILED", report)
    return SuiteResult(name, bool(result.success), report, failed)


def split_failed(df: DataFrame, result: SuiteResult, checks: list[Check], id_col: str
                 ) -> tuple[DataFrame, DataFrame]:
    """(good rows, failing rows with `reason` = first failed check in suite order and all `checks`)."""
    order = {c.reason: i for i, c in enumerate(checks)}
    pairs = [(i, order[reason], reason) for reason, ids in result.failed_ids.items() for i in ids]
    spark = df.sparkSession
    id_type = df.schema[id_col].dataType.simpleString()
    bad = spark.createDataFrame(pairs, f"{id_col} {id_type}, ord int, reason string")
    bad = bad.groupBy(id_col).agg(
        F.sort_array(F.collect_list(F.struct("ord", "reason"))).alias("_r"))
    bad = bad.select(id_col, F.col("_r")[0]["reason"].alias("reason"),
                     F.col("_r")["reason"].alias("checks"))
    good = df.join(F.broadcast(bad), id_col, "left_anti")
    failing = df.join(F.broadcast(bad), id_col, "inner")
    return good, failing
