"""Spark jobs: each module runs with `spark-submit` and from Python."""
