"""What every feature job shares: its one-line summary, and a clear error for a missing input."""
from __future__ import annotations

from dataclasses import dataclass

from mminterest.config import Config
from spark_jobs import delta_io

MADE_BY = {"interactions": "mmi ingest", "items": "mmi ingest", "user_behaviour": "mmi build behaviour",
           "item_embeddings": "mmi embed items"}


class MissingInputError(RuntimeError):
    """An input table of a feature job does not exist yet."""


def require(cfg: Config, *tables: str) -> None:
    """Raise MissingInputError naming each absent input table and what makes it."""
    missing = [t for t in tables if not delta_io.exists(cfg.table(t))]
    if missing:
        raise MissingInputError("missing input table(s): " + "; ".join(
            f"{cfg.table(t)} (made by {MADE_BY.get(t, '?')})" for t in missing))


@dataclass(frozen=True)
class JobSummary:
    """Counts and time of one run of a feature job; `line()` is its one-line summary."""

    job: str
    rows_in: int
    rows_out: int
    seconds: float
    note: str = ""

    def line(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return (f"{self.job}: rows in {self.rows_in:,}, rows out {self.rows_out:,}{note}, "
                f"{self.seconds:.1f} s")
