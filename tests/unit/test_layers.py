"""The architecture rules of README.md ("Architecture"), checked on the source with `ast`.

Imports are followed through the project's own modules, those inside functions included (a lazy
import still loads its library when that code runs); `if TYPE_CHECKING:` blocks are not.
    models (training/models/) import torch, numpy and the standard library only
    DAG files (dags/) import nothing heavy at module level (Airflow parses them every 30 s)
    serving never loads Spark (pyspark, delta-spark, py4j)
    feature math (mminterest/feature_math.py, mminterest/candidates.py) imports neither Spark nor
    Feast
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from mminterest.config import REPO_ROOT

PACKAGES = {"mminterest", "spark_jobs", "feature_repo", "training", "serving", "infra"}
STDLIB = set(sys.stdlib_module_names)
SPARK = {"pyspark", "delta", "py4j"}
HEAVY = (
    SPARK
    | {
        "torch",
        "feast",
        "pandas",
        "numpy",
        "pyarrow",
        "deltalake",
        "transformers",
        "great_expectations",
        "sklearn",
        "mlflow",
        "petastorm",
    }
    | PACKAGES
)


def _file(module: str, root: Path = REPO_ROOT) -> Path | None:
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path, root: Path = REPO_ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported(path: Path, lazy: bool = True, root: Path = REPO_ROOT) -> set[str]:
    """Modules `path` imports (relative imports resolved; `from pkg import name` also yields
    pkg.name when that is a project module). `lazy=False`: module level only."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node) or (
            not lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        ):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if _file(f"{base}.{a.name}", root))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def external_imports(
    start: list[Path], lazy: bool = True, root: Path = REPO_ROOT
) -> dict[str, str]:
    """Top-level names of the non-project libraries reachable from `start` through project modules
    -> the chain of modules that imports it first."""
    todo = [(path, _module_name(path, root)) for path in start]
    seen, out = {path for path, _ in todo}, {}
    while todo:
        path, chain = todo.pop()
        for name in sorted(imported(path, lazy, root)):
            top = name.split(".")[0]
            if top not in PACKAGES:
                out.setdefault(top, f"{chain} -> {name}")
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                target = _file(".".join(parts[:i]), root)
                if target and target not in seen:
                    seen.add(target)
                    todo.append((target, f"{chain} -> {'.'.join(parts[:i])}"))
    return out


def test_models_import_torch_and_numpy_only():
    models = sorted((REPO_ROOT / "training" / "models").glob("*.py"))
    assert len(models) > 5
    for path in models:
        for name in imported(path):
            if name.split(".")[0] == "training":
                assert name.startswith("training.models"), f"{path.name} imports {name}"
    libraries = set(external_imports(models)) - STDLIB
    assert libraries == {"torch", "numpy"} or libraries == {"torch"}, external_imports(models)


def test_dag_files_import_nothing_heavy_at_module_level():
    dags = REPO_ROOT / "dags"
    files = sorted(dags.glob("*.py"))
    assert files
    local = {p.stem for p in files}
    for path in files:
        top = {name.split(".")[0] for name in imported(path, lazy=False)}
        assert top <= STDLIB | {"airflow"} | local, f"{path.name}: {sorted(top - STDLIB - local)}"
        assert not top & HEAVY, f"{path.name} imports {sorted(top & HEAVY)} at module level"


def test_serving_never_loads_spark():
    serving = sorted((REPO_ROOT / "serving").glob("*.py"))
    reached = external_imports(serving)
    assert {"fastapi", "torch"} <= set(reached)  # the walk does reach the ranker's libraries
    assert not {k: v for k, v in reached.items() if k in SPARK}


def test_feature_math_imports_neither_spark_nor_feast():
    reached = external_imports(
        [REPO_ROOT / "mminterest" / f for f in ("feature_math.py", "candidates.py")]
    )
    assert "numpy" in reached
    assert not {k: v for k, v in reached.items() if k in SPARK | {"feast"}}


def test_the_walk_follows_lazy_relative_and_package_imports(tmp_path):
    pkg = tmp_path / "serving"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import typing\nif typing.TYPE_CHECKING:\n    import feast\n")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    import pyspark.sql\n")
    assert external_imports([pkg / "a.py"], root=tmp_path) == {
        "pyspark": "serving.a -> serving.b -> pyspark.sql",
        "typing": "serving.a -> serving -> typing",
    }
    assert external_imports([pkg / "a.py"], lazy=False, root=tmp_path) == {
        "typing": "serving.a -> serving -> typing"
    }
