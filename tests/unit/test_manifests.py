"""infra/k8s: standard kinds validate against the Kubernetes schemas (kubernetes-validate, offline);
SparkApplications, rendered with their kustomize patches, and the Airflow Helm values carry the
keys they need; names cross-reference; the delta-spark configuration lives in one file and
matches the pinned versions and the session factory."""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from mminterest.config import REPO_ROOT, Config

K8S = REPO_ROOT / "infra" / "k8s"
K8S_VERSION = "1.33.0"  # schemas ship inside kubernetes-validate: no network
CUSTOM = {"SparkApplication"}
NOT_CONFIG = {"MMI_DELTA_SPARK", "MMI_LOGICAL_DATE"}  # MMI_* variables that are not Config fields
DELTA_MARKERS = [
    "io.delta",
    "spark.sql.extensions",
    "spark.sql.catalog.spark_catalog",
    "MMI_DELTA_SPARK",
]


def _load(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / rel).read_text()) if d]


KUSTOMIZATION = _load("kustomization.yaml")[0]
PATCHES = [p["path"] for p in KUSTOMIZATION["patches"]]
DOCS = [(rel, doc) for rel in KUSTOMIZATION["resources"] for doc in _load(rel)]
STANDARD = [(rel, d) for rel, d in DOCS if d["kind"] not in CUSTOM]
APPS = [d for _, d in DOCS if d["kind"] == "SparkApplication"]
VALUES = _load("airflow/values.yaml")[0]


def _pins() -> dict[str, str]:
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    pins = (re.match(r"^([\w.-]+)==([\w.]+)", line) for line in lines)
    return {m[1]: m[2] for m in pins if m}


def _named(kind: str) -> set[str]:
    return {d["metadata"]["name"] for _, d in DOCS if d["kind"] == kind}


def _merge(target, patch):
    """RFC 7386 JSON merge patch: what kustomize does with a patch of a custom resource."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _leaves(d: dict, prefix=()) -> set[tuple]:
    return {
        p
        for k, v in d.items()
        for p in (_leaves(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k)})
    }


def _rendered(app: dict) -> dict:
    out = app
    for rel in PATCHES:
        patch = _load(rel)[0]
        out = _merge(out, {"spec": patch["spec"]})
    return out


def test_kustomization_lists_every_manifest():
    files = {str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml")}
    listed = set(KUSTOMIZATION["resources"]) | set(PATCHES)
    assert files - listed == {"kustomization.yaml", "kustomizeconfig.yaml", "airflow/values.yaml"}
    assert listed <= files


@pytest.mark.parametrize(
    "rel,doc", STANDARD, ids=[f"{d['kind']}/{d['metadata']['name']}" for _, d in STANDARD]
)
def test_standard_kinds_validate_against_schema(rel, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validator_rejects_a_typo():
    deployment = copy.deepcopy(next(d for _, d in DOCS if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("app", APPS, ids=[a["metadata"]["name"] for a in APPS])
def test_spark_application(app):
    patches = [_load(rel)[0] for rel in PATCHES]
    for patch in patches:  # a job sets nothing the shared patches set (lists would be replaced)
        assert not _leaves(app["spec"]) & _leaves(patch["spec"]), patch["metadata"]
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    spec = _rendered(app)["spec"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster" and spec["image"]
    assert spec["sparkVersion"] == _pins()["pyspark"]
    for role in ("driver", "executor"):
        assert {"cores", "memory"} <= set(spec[role]), role
        assert [e["configMapRef"]["name"] for e in spec[role]["envFrom"]] == ["mmi-env"]
        assert {m["name"] for m in spec[role]["volumeMounts"]} <= {
            v["name"] for v in spec["volumes"]
        }
    assert spec["executor"]["instances"] >= 1
    assert spec["driver"]["serviceAccount"] in _named("ServiceAccount")
    assert {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]} <= _named(
        "PersistentVolumeClaim"
    )
    conf = spec["sparkConf"]
    assert conf["spark.kubernetes.driverEnv.MMI_DELTA_SPARK"] == "1"
    assert conf["spark.kubernetes.driverEnv.MMI_SPARK_MASTER"].startswith("k8s://")
    main = spec["mainApplicationFile"]
    assert main.startswith("local:///opt/mminterest/spark_jobs/") and main.endswith(".py")
    module = REPO_ROOT / "spark_jobs" / main.rsplit("/", 1)[1]
    assert module.is_file(), f"{main}: {module.relative_to(REPO_ROOT)} does not exist"
    assert 'if __name__ == "__main__"' in module.read_text()


def test_delta_config_in_one_place_and_consistent():
    holders = {
        str(p.relative_to(K8S))
        for p in K8S.rglob("*.yaml")
        if any(m in p.read_text() for m in DELTA_MARKERS)
    }
    assert holders == {"spark/delta.yaml"}
    delta = _load("spark/delta.yaml")[0]["spec"]
    (package,) = delta["deps"]["packages"]
    assert package == f"io.delta:delta-spark_2.13:{_pins()['delta-spark']}"
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    assert list(jars.glob("spark-core_2.13-*.jar")), "pyspark's Scala version is not 2.13"
    session = (REPO_ROOT / "spark_jobs" / "session.py").read_text()
    for key in ("spark.sql.extensions", "spark.sql.catalog.spark_catalog"):
        assert delta["sparkConf"][key] in session, key  # the same classes as the session factory


def test_names_cross_reference():
    workloads = [d for _, d in DOCS if d["kind"] in ("Deployment", "StatefulSet")]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for _, svc in (x for x in DOCS if x[1]["kind"] == "Service"):
        selector = svc["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pod_labels), svc["metadata"]["name"]
    for w in workloads:
        assert (
            w["spec"]["selector"]["matchLabels"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        )
        if w["kind"] == "StatefulSet":
            assert w["spec"]["serviceName"] in _named("Service")
        for c in w["spec"]["template"]["spec"]["containers"]:
            assert {e["configMapRef"]["name"] for e in c.get("envFrom", [])} <= _named("ConfigMap")
    for _, hpa in (x for x in DOCS if x[1]["kind"] == "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["name"] in _named(ref["kind"])
    for _, binding in (x for x in DOCS if x[1]["kind"] == "RoleBinding"):
        assert binding["roleRef"]["name"] in _named("Role")


def test_mmi_variables_are_config_fields():
    fields = {f"MMI_{name.upper()}" for name in Config.model_fields}
    text = "\n".join(p.read_text() for p in K8S.rglob("*.yaml"))
    used = set(re.findall(r"\bMMI_[A-Z_]+\b", text)) - NOT_CONFIG
    assert used and used <= fields, used - fields


def test_ranker_runs_mmi_serve():
    deployment = next(d for _, d in DOCS if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mmi", "serve"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MMI_SERVE_HOST"] == "0.0.0.0"
    assert {p["containerPort"] for p in container["ports"]} == {int(env["MMI_SERVE_PORT"])}
    assert "cpu" in container["resources"]["requests"]  # the HPA scales on CPU utilisation
    from mminterest.cli import build_parser

    (commands,) = [
        a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ]
    assert "serve" in commands, "`mmi serve` is not registered (serving/commands.py)"


def test_airflow_helm_values():
    assert VALUES["executor"] == "KubernetesExecutor"
    assert VALUES["airflowVersion"] == _pins()["apache-airflow"]
    assert VALUES["images"]["airflow"]["repository"] and VALUES["images"]["airflow"]["tag"]
    env = {e["name"]: e["value"] for e in VALUES["env"]}
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("/dags")
    assert yaml.safe_load(env["AIRFLOW_CONN_SPARK_DEFAULT"])["conn_type"] == "spark"
    env_from = yaml.safe_load(VALUES["extraEnvFrom"])
    assert {e["configMapRef"]["name"] for e in env_from} <= _named("ConfigMap")
    claims = {v["persistentVolumeClaim"]["claimName"] for v in VALUES["workers"]["extraVolumes"]}
    assert claims <= _named("PersistentVolumeClaim")
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert VALUES[key], key  # secrets come from the cluster, never from this file
    subjects = {s["name"] for _, b in DOCS if b["kind"] == "RoleBinding" for s in b["subjects"]}
    assert "airflow-worker" in subjects  # release `airflow`: its workers submit SparkApplications
