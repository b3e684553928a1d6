"""`mmi` registers every command module and fails loudly when one is missing."""

import pytest

from mminterest import cli


def test_every_command_module_registers_its_commands():
    (sub,) = [a for a in cli.build_parser()._actions if a.dest == "command"]
    assert {"config", "bench", "ingest", "features", "content", "train", "serve"} <= set(
        sub.choices
    )


def test_a_missing_command_module_fails_the_parser(monkeypatch):
    monkeypatch.setattr(
        cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "spark_jobs.no_such_commands"]
    )
    with pytest.raises(ModuleNotFoundError, match="spark_jobs.no_such_commands"):
        cli.build_parser()
