"""Great Expectations suites of the ingest job, as code. Each check's reason names the failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import great_expectations.expectations as gxe

from spark_jobs.validation import Check

REPLACEMENT_CHAR = "\ufffd"  # what UTF-8 decoding leaves where the input bytes were not UTF-8


def _is_true(column: str, reason: str) -> Check:
    return Check(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True]), reason)


def item_checks(max_text_chars: int) -> list[Check]:
    return [
        Check(
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"), "missing or non-integer item_id"
        ),
        Check(gxe.ExpectColumnValuesToNotBeNull(column="title"), "missing title"),
        Check(gxe.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1), "empty title"),
        Check(
            gxe.ExpectColumnValueLengthsToBeBetween(column="text", max_value=max_text_chars),
            f"oversized text (> {max_text_chars} chars)",
        ),
        Check(
            gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=REPLACEMENT_CHAR),
            "non-UTF-8 text",
        ),
        _is_true("first_of_id", "duplicate item_id"),
    ]


def image_checks() -> list[Check]:
    return [
        Check(
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"), "missing or non-integer item_id"
        ),
        _is_true("item_known", "image of unknown item_id"),
        _is_true("image_exists", "missing image file"),
        _is_true("image_decodes", "corrupt image file"),
        _is_true("first_of_id", "duplicate image for item_id"),
    ]


def interaction_checks(
    rating_min: float, rating_max: float, now: datetime | None = None
) -> list[Check]:
    now = now or datetime.now(UTC)
    return [
        Check(
            gxe.ExpectColumnValuesToNotBeNull(column="user_id"), "missing or non-integer user_id"
        ),
        Check(
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"), "missing or non-integer item_id"
        ),
        Check(gxe.ExpectColumnValuesToNotBeNull(column="event_ts"), "unparsable timestamp"),
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="event_ts",
                min_value=datetime(1990, 1, 1, tzinfo=UTC),
                max_value=now + timedelta(days=1),
            ),
            "timestamp out of range",
        ),
        Check(gxe.ExpectColumnValuesToNotBeNull(column="rating"), "missing or non-numeric rating"),
        Check(
            gxe.ExpectColumnValuesToBeBetween(
                column="rating", min_value=rating_min, max_value=rating_max
            ),
            f"rating out of range [{rating_min}, {rating_max}]",
        ),
        _is_true("item_known", "unknown item_id"),
        _is_true("first_of_key", "duplicate event"),
    ]
