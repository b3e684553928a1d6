"""A feature job refuses to start without its inputs and says what makes each missing one."""

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from spark_jobs.job import JobSummary, MissingInputError, require


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
