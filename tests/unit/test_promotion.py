"""One promotion step for CTR models and content encoders (training.runs.point_link): an atomic
symlink swap, and a real directory where the link goes is refused for both, never deleted."""

import json

import pytest

from mminterest.config import load_config
from training import runs
from training.content import commands as content


def _saved(path, **files):
    path.mkdir(parents=True)
    for name, payload in files.items():
        (path / name).write_text(json.dumps(payload))
    return path


def test_both_promotions_swap_the_link_and_refuse_a_real_directory(tmp_path):
    cfg = load_config(home=tmp_path / "mmi")
    run = _saved(cfg.models_dir / "ctr" / "r1", **{"metrics.json": {"auc": 0.7}})
    enc = _saved(cfg.models_dir / "content" / "v1", **{"config.json": {}})
    enc2 = _saved(cfg.models_dir / "content" / "v2", **{"config.json": {}})
    runs.point_link(cfg.model_dir, run)  # what runs.promote does (without MLflow's spawn)
    assert cfg.model_dir.resolve() == run
    assert content.promote(cfg, "v1") == enc and cfg.encoder_dir.resolve() == enc
    assert content.promote(cfg, "v2") == enc2 and cfg.encoder_dir.resolve() == enc2
    for link in (cfg.model_dir, cfg.encoder_dir):
        link.unlink()
        _saved(link, **{"keep.json": {"mine": 1}})  # e.g. a model copied in by hand
    better = _saved(cfg.models_dir / "ctr" / "r2", **{"metrics.json": {"auc": 0.9}})
    with pytest.raises(FileExistsError, match="real directory"):
        runs.promote(cfg, better)
    with pytest.raises(FileExistsError, match="real directory"):
        content.promote(cfg, "v1")
    for link in (cfg.model_dir, cfg.encoder_dir):
        assert not link.is_symlink() and (link / "keep.json").exists()
    assert not list(cfg.models_dir.rglob(".current.*"))  # no temporary link left behind
