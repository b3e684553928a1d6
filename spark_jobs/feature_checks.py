"""Great Expectations gates of the computed feature tables (user_behaviour, interest_features).

Array columns are first reduced to scalar check columns (one flag per concern over all
modalities: few expectations, as each costs Spark jobs), then validated with
`validation.run_suite`. `publish_gate` raises `FeatureCheckError` naming the failing checks, the GE
report and its Data Docs page: the jobs call it before writing, so a table that fails is never
published.

Distribution cells must sum to (valid positions of that modality) / T: hist_len / T when every
history item and the target have the modality, less where it is masked (CONTRACTS.md).
"""

from __future__ import annotations

import functools
import operator

import great_expectations.expectations as gxe
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from mminterest.config import Config
from mminterest.schemas import MODALITIES
from spark_jobs.validation import Check, SuiteResult, run_suite

KEY = "_key"  # "user:item:ts" string naming each checked row in the GE report
SUM_TOLERANCE = 1e-5


class FeatureCheckError(RuntimeError):
    """A computed table failed its checks; it was not written."""


def publish_gate(frame: DataFrame, name: str, checks: list[Check], cfg: Config) -> SuiteResult:
    """Validate `frame` (with a `_key` column); raise FeatureCheckError if any check fails."""
    frame = frame.persist()  # each expectation runs Spark jobs over it: derive the columns once
    try:
        result = run_suite(
            frame, name, checks, KEY, cfg.reports_dir / "validation", cfg.ge_pandas_max_rows
        )
    finally:
        frame.unpersist()
    if not result.success:
        failed = "; ".join(
            f"{reason} ({len(ids)} rows, e.g. {ids[:3]})" if ids else reason
            for reason, ids in result.failed_ids.items()
        )
        raise FeatureCheckError(
            f"{name} not published, failed checks: {failed}; "
            f"GE report {result.report_path}, data docs {result.docs_page}"
        )
    return result


def check_behaviour(df: DataFrame, cfg: Config) -> SuiteResult:
    """Gate a user_behaviour frame."""
    return publish_gate(
        behaviour_frame(df), "features_user_behaviour", behaviour_checks(cfg.seq_len), cfg
    )


def check_interest(df: DataFrame, cfg: Config) -> SuiteResult:
    """Gate an interest_features frame."""
    return publish_gate(
        interest_frame(df, cfg.seq_len, cfg.time_slices * cfg.sim_bins),
        "features_interest",
        interest_checks(cfg.seq_len, cfg.time_slices, cfg.sim_bins),
        cfg,
    )


def behaviour_frame(df: DataFrame) -> DataFrame:
    """Scalar check columns of a user_behaviour frame."""
    return df.select(
        F.concat_ws(":", "user_id", F.col("event_ts").cast("string")).alias(KEY),
        "user_id",
        "event_ts",
        "hist_len",
        _flag(F.col("user_id").isNotNull() & F.col("event_ts").isNotNull()).alias("key_present"),
        _flag(
            (F.size("hist_item_ids") == F.col("hist_len"))
            & (F.size("hist_ts") == F.col("hist_len"))
        ).alias("lengths_agree"),
        _flag(F.col("hist_ts") == F.sort_array("hist_ts", asc=False)).alias("most_recent_first"),
        _flag(F.array_max("hist_ts") * 1_000_000 < F.unix_micros("event_ts")).alias(
            "history_before_ts"
        ),
    )


def behaviour_checks(seq_len: int) -> list[Check]:
    return [
        _true("key_present", "null user_id or event_ts"),
        Check(
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "event_ts"]),
            "duplicate (user_id, event_ts) state",
        ),
        _between("hist_len", 1, seq_len, f"hist_len outside [1, {seq_len}]"),
        _true("lengths_agree", "hist_len differs from the array lengths"),
        _true("most_recent_first", "history not most recent first"),
        _true("history_before_ts", "history item at or after the state's valid-from time"),
    ]


def interest_frame(df: DataFrame, seq_len: int, cells: int) -> DataFrame:
    """Scalar check columns of an interest_features frame, each over both modalities. Built-in
    array functions where they suffice (Spark runs lambdas element by element, interpreted)."""

    def every(make) -> Column:
        return _flag(functools.reduce(operator.and_, [make(*_arrays(m)) for m in MODALITIES]))

    def valid(mask: Column) -> Column:
        return F.size(F.array_remove(mask, False))

    return df.select(
        F.concat_ws(":", "user_id", "item_id", F.col("event_ts").cast("string")).alias(KEY),
        "hist_len",
        _flag(
            F.col("user_id").isNotNull()
            & F.col("item_id").isNotNull()
            & F.col("event_ts").isNotNull()
        ).alias("key_present"),
        every(
            lambda sim, mask, dist: (
                (F.size(sim) == seq_len) & (F.size(mask) == seq_len) & (F.size(dist) == cells)
            )
        ).alias("shapes"),
        every(lambda sim, mask, dist: _finite(sim) & _finite(dist)).alias("finite"),
        every(lambda sim, mask, dist: _within(sim, 0, 1)).alias("sim_in_unit"),
        every(
            lambda sim, mask, dist: (
                ~F.array_contains(F.zip_with(sim, mask, lambda s, k: ~k & (s != 0)), True)
            )
        ).alias("masked_zero"),
        every(lambda sim, mask, dist: valid(mask) <= F.col("hist_len")).alias("mask_within_hist"),
        every(lambda sim, mask, dist: _within(dist, 0, 1)).alias("dist_in_unit"),
        every(
            lambda sim, mask, dist: (
                F.abs(F.aggregate(dist, F.lit(0.0), operator.add) - valid(mask) / seq_len)
                <= SUM_TOLERANCE
            )
        ).alias("dist_sums"),
    )


def interest_checks(seq_len: int, time_slices: int, sim_bins: int) -> list[Check]:
    arrays = "/".join(f"{k}_{m}" for k in ("sim", "dist") for m in MODALITIES)
    return [
        _true("key_present", "null user_id, item_id or event_ts"),
        _between("hist_len", 0, seq_len, f"hist_len outside [0, {seq_len}]"),
        _true(
            "shapes",
            f"sim/sim_mask arrays not of length {seq_len} or dist not of "
            f"{time_slices * sim_bins} cells",
        ),
        _true("finite", f"non-finite value in {arrays}"),
        _true("sim_in_unit", "similarity score outside [0, 1]"),
        _true("masked_zero", "similarity score non-zero at a masked position"),
        _true("mask_within_hist", "more valid positions than hist_len"),
        _true("dist_in_unit", "interest distribution cell outside [0, 1]"),
        _true(
            "dist_sums",
            f"interest distribution cells do not sum to valid positions / T "
            f"(tolerance {SUM_TOLERANCE})",
        ),
    ]


def _flag(condition: Column) -> Column:
    return F.coalesce(condition, F.lit(False))


def _arrays(m: str) -> tuple[Column, Column, Column]:
    return F.col(f"sim_{m}"), F.col(f"sim_mask_{m}"), F.col(f"dist_{m}")


def _within(arr: Column, lo: float, hi: float) -> Column:
    """All elements in [lo, hi] (false with a NaN: Spark orders NaN above every number)."""
    return (F.array_min(arr) >= lo) & (F.array_max(arr) <= hi)


def _finite(arr: Column) -> Column:
    return (
        ~F.isnan(F.array_max(arr))
        & (F.array_max(arr) < float("inf"))
        & (F.array_min(arr) > float("-inf"))
    )


def _true(column: str, reason: str) -> Check:
    return Check(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True]), reason)


def _between(column: str, lo: float, hi: float, reason: str) -> Check:
    return Check(
        gxe.ExpectColumnValuesToBeBetween(column=column, min_value=lo, max_value=hi), reason
    )
