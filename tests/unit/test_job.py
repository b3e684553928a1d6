"""A feature job refuses to start without its inputs and says what makes each missing one; an
error that cannot be turned into text (a Py4JJavaError whose JVM is gone) counts as a dead JVM."""

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from spark_jobs.job import JobSummary, MissingInputError, _is_oom, _jvm_gone, require


def test_require_names_each_missing_table_and_its_maker(cfg):
    write_deltalake(cfg.table("interactions"), pa.table({"user_id": [1]}))
    require(cfg, "interactions")  # present: no error
    with pytest.raises(MissingInputError) as err:
        require(cfg, "interactions", "user_behaviour", "item_embeddings")
    message = str(err.value)
    assert cfg.table("user_behaviour") in message and "mmi build behaviour" in message
    assert cfg.table("item_embeddings") in message and "mmi embed items" in message
    assert cfg.table("interactions") not in message


def test_summary_line():
    line = JobSummary("behaviour", 100_004, 41_506, 33.04, "states of T <= 64").line()
    assert line == "behaviour: rows in 100,004, rows out 41,506 (states of T <= 64), 33.0 s"


class _Unprintable(RuntimeError):
    """Like a Py4JJavaError once its JVM has exited: str() asks the dead JVM and fails."""

    def __str__(self) -> str:
        raise ConnectionRefusedError("JVM gone")


def test_an_error_that_cannot_be_printed_means_the_jvm_is_gone():
    try:
        try:
            raise _Unprintable()  # the failed write
        finally:
            raise _Unprintable()  # the clean-up after it, answered by the exiting JVM
    except _Unprintable as err:
        assert _jvm_gone(err) and not _is_oom(err)
    assert not _jvm_gone(ValueError("bad column"))
