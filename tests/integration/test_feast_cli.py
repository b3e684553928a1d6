"""The committed feature_repo/feature_store.yaml serves the `feast` CLI: `feast apply` and
`feast plan` run from feature_repo/ with MMI_HOME in the environment, and the registry they write
is the one `open_store` reads for that home."""

import os
import subprocess
import sys
from pathlib import Path

from feature_repo import repo
from feature_repo.store_config import open_store
from mminterest.config import load_config

FEAST = Path(sys.executable).with_name("feast")


def _feast(*args: str, home: Path) -> str:
    env = {**os.environ, "MMI_HOME": str(home)}
    done = subprocess.run(
        [str(FEAST), *args],
        cwd=repo.REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_feast_apply_and_plan_from_the_repository_folder(tmp_path):
    home = tmp_path / "mmi"
    (home / "feast").mkdir(parents=True)
    applied = _feast("apply", home=home)
    for name in ("entity user", "feature view item_embeddings", "feature service ctr_serving"):
        assert f"Created {name}" in applied
    assert "No changes to registry" in _feast("plan", home=home)
    store = open_store(load_config(home=home))
    assert {fv.name for fv in store.list_feature_views()} == {
        "item_embeddings",
        "user_behaviour",
        "interest_features",
    }
    assert len(repo.apply(store)) == 7  # the in-process apply finds the same definitions


def test_the_feast_cli_reads_definitions_py_only():
    ignored = {
        line.strip()
        for line in (repo.REPO_DIR / ".feastignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    modules = {p.name for p in repo.REPO_DIR.glob("*.py")} - {"__init__.py", "definitions.py"}
    assert ignored == modules


def test_feast_ui_imports():
    """`feast ui` serves the registry through feast.registry_server (feast's grpcio extra)."""
    import feast.registry_server
    import feast.ui_server

    assert callable(feast.ui_server.start_server) and feast.registry_server.RegistryServer
