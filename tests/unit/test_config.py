"""mminterest.config: defaults, then MMI_* environment variables, then explicit overrides; typed,
paths absolute, empty model folders defaulting under home, a bad value named in the error."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from mminterest.config import Config, load_config


def test_environment_then_overrides_with_paths_resolved(monkeypatch, tmp_path):
    monkeypatch.setenv("MMI_SEQ_LEN", "12")
    monkeypatch.setenv("MMI_HOME", str(tmp_path / "a" / ".." / "env-home"))
    monkeypatch.setenv("MMI_ONLINE_STORE", "redis")
    cfg = load_config(online_store="sqlite", sim_bins=4)
    assert (cfg.seq_len, cfg.sim_bins, cfg.online_store, cfg.time_slices) == (12, 4, "sqlite", 10)
    assert cfg.home == tmp_path / "env-home" and cfg.dataset_dir.is_absolute()
    assert cfg.model_dir == cfg.home / "models" / "ctr" / "current"
    assert cfg.encoder_dir == cfg.home / "models" / "content" / "current"
    assert load_config(model_dir=Path("m")).model_dir == Path("m").resolve()
    sources = cfg.sources()
    assert set(sources) == set(Config.model_fields)
    assert sources["seq_len"] == "env" and sources["sim_bins"] == "default"


def test_a_bad_value_is_a_clear_error_and_the_config_is_frozen(monkeypatch):
    monkeypatch.setenv("MMI_SERVE_PORT", "eighty")
    with pytest.raises(ValidationError, match="serve_port"):
        load_config()
    monkeypatch.delenv("MMI_SERVE_PORT")
    with pytest.raises(ValidationError, match="no_such_field"):
        load_config(no_such_field=1)
    cfg = load_config()
    with pytest.raises(ValidationError):
        cfg.seq_len = 3
    assert cfg.model_copy(update={"seq_len": 3}).seq_len == 3 and hash(cfg) == hash(load_config())
