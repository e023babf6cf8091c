"""The Kubernetes manifests, rendered by kustomize and checked offline: against the Kubernetes API schemas
(kubernetes-validate), the KEDA and Prometheus Operator schemas kept in deploy/k8s/schemas, and what an
SRE relies on when the cluster drains a node, a pod dies or a broker is lost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.ops.support import K8S, ROOT, render

K8S_VERSION = "1.33.0"
SERVICES = {
    "ingest": 8000, "insights": 8001, "marketing": 8002, "cio-sink": 8003,
    "achievements": 8004, "dispatcher": 8005, "analytics": 8006,
}  # fmt: skip
CONSUMERS = {
    "marketing": {"synergy.events.v1", "synergy.insights.v1"},
    "cio-sink": {"synergy.events.v1", "synergy.loyalty.v1", "synergy.marketing.v1", "synergy.snapshots.v1"},
    "achievements": {"synergy.events.v1"},
    "dispatcher": {"synergy.events.v1", "synergy.loyalty.v1", "synergy.marketing.v1"},
    "analytics": {"synergy.events.v1", "synergy.loyalty.v1", "synergy.marketing.v1"},
}
PARTITIONS = 12
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
}
SECRET_ENV = {
    "DATABASE_URL", "SYNERGY_ENCRYPTION_KEY", "CIO_SITE_ID", "CIO_API_KEY", "CIO_WEBHOOK_SIGNING_KEY",
    "MARKETING_TOKEN_SECRET", "DOMAIN_EVENT_WEBHOOK_SECRET", "POSTHOG_PROJECT_API_KEY",
}  # fmt: skip


@pytest.fixture(scope="module", params=["local", "production"])
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    [config_map] = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("synergy-config")
    ]
    return config_map["data"]


def test_every_object_is_valid_against_its_schema(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    custom = 0
    for doc in docs:
        schema_file = CUSTOM_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema_file:
            schema = json.loads((K8S / "schemas" / schema_file).read_text())
            jsonschema.validate(doc, schema)
            custom += 1
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert custom == 5 + 7 + 1  # ScaledObjects, ServiceMonitors, the PrometheusRule


def test_a_broken_manifest_is_refused_by_the_validators() -> None:
    """The validators catch what a typo does: a misspelt field, a string where a number belongs."""
    deployment = workloads(render("local"))["ingest"]
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    scaled = by_kind(render("local"), "ScaledObject")["cio-sink"]
    scaled["spec"]["maxReplicaCount"] = "12"
    schema = json.loads((K8S / "schemas" / CUSTOM_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")]).read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, schema)


def test_every_service_has_workload_service_probes_limits_pdb_and_network_policy(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    assert set(workloads(docs)) == set(SERVICES)
    assert set(by_kind(docs, "StatefulSet")) == {"achievements"}
    services, pdbs, policies = (
        by_kind(docs, "Service"),
        by_kind(docs, "PodDisruptionBudget"),
        by_kind(docs, "NetworkPolicy"),
    )
    for name, port in SERVICES.items():
        pod = workloads(docs)[name]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["command"] == ["python", "-m", "synergy_" + name.replace("-", "_")]
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}
        for c in [*pod["initContainers"], container]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert services[name]["spec"]["ports"][0]["port"] == port
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert policies[name]["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        assert {"Ingress", "Egress"} == set(policies[name]["spec"]["policyTypes"])
    assert policies["default-deny"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_the_autoscalers_alone_own_the_replica_counts(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """A workload that also fixed `replicas` would be scaled back to it by every `kubectl apply`."""
    overlay, docs = rendered
    scaled = {
        **{h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"] for h in by_kind(docs, "HorizontalPodAutoscaler").values()},
        **{s["spec"]["scaleTargetRef"]["name"]: s["spec"]["minReplicaCount"] for s in by_kind(docs, "ScaledObject").values()},
    }  # fmt: skip
    assert set(scaled) == set(SERVICES)
    assert not {name for name, w in workloads(docs).items() if "replicas" in w["spec"]}
    expected = {
        "local": dict.fromkeys(SERVICES, 1),
        "production": {**dict.fromkeys(SERVICES, 2), "ingest": 3},
    }
    assert scaled == expected[overlay]


def test_achievements_keeps_its_rocksdb_state_on_a_volume_per_pod(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = rendered
    achievements = by_kind(docs, "StatefulSet")["achievements"]
    [claim] = achievements["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == (
        "50Gi" if overlay == "production" else "10Gi"
    )
    [container] = achievements["spec"]["template"]["spec"]["containers"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert {"name": "ACHIEVEMENTS_DATA_DIR", "value": "/data"} in container["env"]


def test_secrets_are_referenced_never_inlined(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert not SECRET_ENV & set(config(docs))
    referenced = set()
    for workload in [*workloads(docs).values(), *by_kind(docs, "Job").values()]:
        pod = workload["spec"]["template"]["spec"]
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            for env in c.get("env", []):
                if env["name"] in SECRET_ENV:
                    assert "value" not in env, f"{workload['metadata']['name']} inlines {env['name']}"
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "synergy-secrets"
                    referenced.add(env["name"])
    assert referenced == SECRET_ENV


def test_the_migration_job_runs_before_the_services(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    job = by_kind(docs, "Job")["synergy-migrate"]
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["sh", "-c", "synergy db migrate && synergy topics create"]
    for name, workload in workloads(docs).items():
        [wait] = workload["spec"]["template"]["spec"]["initContainers"]
        [container] = workload["spec"]["template"]["spec"]["containers"]
        assert wait["command"][:3] == ["synergy", "db", "wait"], name
        assert wait["image"] == container["image"]  # the schema this very image expects


def test_ingest_scales_on_cpu_and_every_consumer_on_its_lag_up_to_the_partitions(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["ingest"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ingest"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    scaled = by_kind(docs, "ScaledObject")
    assert set(scaled) == set(CONSUMERS)
    for name, topics in CONSUMERS.items():
        spec = scaled[name]["spec"]
        kind = "StatefulSet" if name == "achievements" else "Deployment"
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": kind, "name": name}
        assert spec["maxReplicaCount"] == PARTITIONS
        assert int(config(docs)["SYNERGY_TOPIC_PARTITIONS"]) == PARTITIONS
        assert {t["metadata"]["topic"] for t in spec["triggers"]} == topics
        assert {t["type"] for t in spec["triggers"]} == {"kafka"}
        assert {t["metadata"]["allowIdleConsumers"] for t in spec["triggers"]} == {"false"}


def test_production_replicates_topics_three_times_with_two_in_sync(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = rendered
    data = config(docs)
    expected = ("3", "2") if overlay == "production" else ("1", "1")
    assert (data["SYNERGY_TOPIC_REPLICATION"], data["SYNERGY_TOPIC_MIN_INSYNC"]) == expected
    job = by_kind(docs, "Job")["synergy-migrate"]
    [migrate] = job["spec"]["template"]["spec"]["containers"]
    [config_map] = [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"]
    assert migrate["envFrom"] == [{"configMapRef": {"name": config_map}}]


def test_the_prometheus_rule_is_alerts_yml() -> None:
    [rule] = [d for d in render("production") if d["kind"] == "PrometheusRule"]
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def test_make_k8s_render_writes_both_overlays(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run(
        ["make", "-s", "k8s-render", f"OUT={tmp_path}"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.yaml", "production.yaml"]
    docs = [d for d in yaml.safe_load_all((tmp_path / "production.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "StatefulSet", "Job", "ScaledObject", "PrometheusRule"}
