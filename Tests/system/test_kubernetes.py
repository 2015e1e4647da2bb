"""Prism on Kubernetes (deploy/kubernetes/): the manifests render, validate strictly against the
Kubernetes API schemas, configure the real binaries the way compose does, agree with compose and
the binaries on ports, paths and names; and the rolling changes Kubernetes makes (processors
scaled up and down under a headless Service, a gateway replaced) fail no upload, with real
processes run with each manifest's own environment.

No cluster runs here. A pod is a process started with the arguments and environment its
manifest gives it, its volumes made as temporary directories (ConfigMaps and Secrets written
out as files), its IP a 127.0.0.x address; the headless Service's DNS name is answered by
conftest.FakeDNS from a file the test rewrites as the endpoints change.
"""
import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from functools import lru_cache
from pathlib import Path

import pytest
import requests
import yaml

import kustomize_lite
from conftest import BIN, REPO, FakeDNS, Service, free_port, metric_value, photo, wait_until
from test_operations import compose_config, dockerfile_env

KUBE = REPO / "deploy" / "kubernetes"
KUSTOMIZATIONS = {"base": KUBE / "base", "example": KUBE / "overlays" / "example"}
EXAMPLES = sorted((KUBE / "examples").glob("*.yaml"))
# The oldest Kubernetes the manifests are for: the preStop `sleep` action is on by default from
# 1.30 (PodLifecycleSleepAction beta). And the newest schema kubernetes-validate ships.
OLDEST_KUBERNETES = "1.30.0"
BINARY_OF_IMAGE = {"prism-gateway": "prism-gateway", "prism-processor": "prism-processor"}


@lru_cache(maxsize=None)
def _rendered(name):
    return tuple(kustomize_lite.render(KUSTOMIZATIONS[name]))


def rendered(name):
    """The objects a kustomization produces (fresh copies: tests may change them)."""
    return yaml.safe_load(yaml.safe_dump(list(_rendered(name))))


def find(objects, kind, name):
    """The one object of a kind whose name is `name` or `name` plus a generator's hash suffix."""
    found = [o for o in objects if o["kind"] == kind and re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


def workloads(objects):
    return [o for o in objects if kustomize_lite.pod_spec(o) is not None]


def image_binary(container):
    """The binary a container runs: the image's ENTRYPOINT (compose/Dockerfile), by image name."""
    name = container["image"].rsplit("/", 1)[-1].split(":")[0]
    return BINARY_OF_IMAGE[name]


def parse_size(text):
    """Kubernetes quantities (Mi, Gi) and Prism sizes (m, g) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 2**10, "m": 2**20, "g": 2**30}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", str(text))
    return int(match.group(1)) * units.get(match.group(2), 1)


def parse_seconds(text):
    match = re.fullmatch(r"(\d+)(ms|s|m)?", str(text))
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match.group(2)]


def binary_default(binary, flag):
    """The default `--help` states for a flag, e.g. 8080 for the gateway's --port."""
    text = subprocess.run([BIN / binary, "--help"], capture_output=True, text=True, timeout=30).stdout
    block = re.search(re.escape(flag) + r" <[^>]+>(.*?)(?=\n  --|\Z)", text, re.S)
    return re.search(r"default ([^;)]+)\)", " ".join(block.group(1).split())).group(1)


# ---- Pods as processes --------------------------------------------------------------------------


class PodSandbox:
    """What a container sees of its pod: its volumes as directories, its environment resolved
    from ConfigMaps and Secrets, and its command line. `secrets` supplies Secrets the
    kustomization leaves to the operator (TLS material), as {name: {key: bytes}}."""

    def __init__(self, objects, workload, root, secrets=None, container=0):
        self.objects = objects
        self.spec = kustomize_lite.pod_spec(workload)
        self.container = self.spec["containers"][container]
        self.secrets = secrets or {}
        self.root = Path(root)
        self.mounts = {}  # mountPath -> local directory
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            local = self.root / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                for key, value in self.config_map(volume["configMap"]["name"]).items():
                    (local / key).write_text(value)
            elif "secret" in volume:
                for key, value in self.secret(volume["secret"]["secretName"]).items():
                    (local / key).write_bytes(value)
                    (local / key).chmod(volume["secret"].get("defaultMode", 0o644))
            else:
                assert "emptyDir" in volume, f"volume {mount['name']}: only configMap, secret and emptyDir are used"
            self.mounts[mount["mountPath"]] = local

    def config_map(self, name):
        return find(self.objects, "ConfigMap", name).get("data", {})

    def secret(self, name):
        if name in self.secrets:
            return self.secrets[name]
        found = find(self.objects, "Secret", name)
        return {k: base64.b64decode(v) for k, v in found.get("data", {}).items()}

    def local_path(self, value):
        """A path inside the container as the directory that stands for its volume here."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(self.mounts[mount]) + value[len(mount.rstrip("/")):]
        return value

    def environment(self):
        """The container's environment as the kubelet builds it: the image's ENV, envFrom, env."""
        env = dict(dockerfile_env(image_binary(self.container).removeprefix("prism-")))
        for source in self.container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.config_map(source["configMapRef"]["name"]))
            else:
                env.update({k: v.decode() for k, v in self.secret(source["secretRef"]["name"]).items()})
        for item in self.container.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif "secretKeyRef" in item["valueFrom"]:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self.secret(ref["name"])[ref["key"]].decode()
            else:
                ref = item["valueFrom"]["configMapKeyRef"]
                env[item["name"]] = self.config_map(ref["name"])[ref["key"]]
        return env

    def local_environment(self, **overrides):
        """environment() with container paths mapped to their directories here, plus overrides,
        on top of a clean copy of this process's environment (no PRISM_ or AWS_ variables)."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("PRISM_", "AWS_"))}
        env = {k: self.local_path(v) for k, v in self.environment().items()}
        return {**clean, **env, **overrides}

    def command(self):
        assert "command" not in self.container, "the manifests run the image's ENTRYPOINT"
        return [str(BIN / image_binary(self.container)), *[self.local_path(a) for a in self.container.get("args", [])]]


class PodProcess(Service):
    """A container of a manifest run as a process, with exactly the environment given."""

    def __init__(self, name, sandbox, log_dir, env, ready_url=None):
        self.name = name
        self.sandbox = sandbox
        self.args = sandbox.command()
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.env = env
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid
        if ready_url:
            self.wait_ready(ready_url, 30)


class Cluster:
    """Processor pods behind a headless Service name and gateway pods, from the example overlay,
    as processes on 127.0.0.x; stops everything it started, by pid, newest first."""

    SERVICE = "prism-processor"

    def __init__(self, tmp_path, seaweed, pki, dns_refresh=None):
        self.tmp = tmp_path
        self.seaweed = seaweed
        self.objects = rendered("example")
        self.started = []
        self.dns = FakeDNS(tmp_path, self.SERVICE)
        self.frame_port = free_port()
        self.dns_refresh = dns_refresh
        ca = pki.ca_cert.read_bytes()
        server_cert, server_key = pki.ca.issue("k8s-processor", "prism-processor", dns=[self.SERVICE])
        client_cert, client_key = pki.ca.issue("k8s-gateway", "prism-gateway", server=False)
        # What cert-manager (or the operator) puts in the Secrets tls-patch.yaml mounts.
        self.secrets = {
            "prism-processor-tls": {"tls.crt": server_cert.read_bytes(), "tls.key": server_key.read_bytes(), "ca.crt": ca},
            "prism-gateway-tls": {"tls.crt": client_cert.read_bytes(), "tls.key": client_key.read_bytes(), "ca.crt": ca},
        }
        self.bucket = find(self.objects, "ConfigMap", "prism-gateway")["data"]["PRISM_S3_BUCKET"]
        client = seaweed.client()
        if self.bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
            client.create_bucket(Bucket=self.bucket)  # the operator's job: the manifests do not create it
        self.processors = {}

    def sandbox(self, kind, name, tag):
        return PodSandbox(self.objects, find(self.objects, kind, name), self.tmp / tag, self.secrets)

    def processor(self, ip):
        sandbox = self.sandbox("Deployment", "prism-processor", f"processor-{ip}")
        status_port = free_port()
        env = sandbox.local_environment(PRISM_PROCESSOR_HOST=ip, PRISM_PROCESSOR_STATUS_HOST=ip,
                                        PRISM_PROCESSOR_PORT=str(self.frame_port), PRISM_PROCESSOR_STATUS_PORT=str(status_port))
        probe = sandbox.container["readinessProbe"]["httpGet"]["path"]
        pod = PodProcess(f"processor-{ip}", sandbox, self.tmp, env, ready_url=f"http://{ip}:{status_port}{probe}")
        pod.ip, pod.status_url = ip, f"http://{ip}:{status_port}"
        self.started.append(pod)
        self.processors[ip] = pod
        return pod

    def publish(self, ips):
        """The headless Service's DNS answer: these pods' addresses (none: NXDOMAIN)."""
        self.dns.publish(ips)

    def gateway_environment(self, sandbox, port):
        dns = sandbox.environment()["PRISM_PROCESSOR_DNS"]
        assert dns == f"{self.SERVICE}:7070", dns
        overrides = dict(
            PRISM_GATEWAY_HOST="127.0.0.1", PRISM_GATEWAY_PORT=str(port),
            PRISM_PROCESSOR_DNS=f"{self.SERVICE}:{self.frame_port}",
            PRISM_S3_ENDPOINT=self.seaweed.endpoint, **self.seaweed.gateway_env(),
            # Cluster DNS: one name, the addresses publish() wrote.
            **self.dns.env())
        if self.dns_refresh:
            overrides["PRISM_PROCESSOR_DNS_REFRESH"] = self.dns_refresh
        return sandbox.local_environment(**overrides)

    def gateway(self, port=None, tag=None):
        port = port or free_port()
        sandbox = self.sandbox("Deployment", "prism-gateway", tag or f"gateway-{port}")
        probe = sandbox.container["startupProbe"]["httpGet"]["path"]
        pod = PodProcess(tag or f"gateway-{port}", sandbox, self.tmp, self.gateway_environment(sandbox, port),
                         ready_url=f"http://127.0.0.1:{port}{probe}")
        pod.url = f"http://127.0.0.1:{port}"
        pod.port = port
        self.started.append(pod)
        return pod

    def stop(self):
        for pod in reversed(self.started):
            pod.stop()


def wait_ready(gateway, count, timeout=30):
    def ready():
        try:
            r = requests.get(gateway.url + "/readyz", timeout=2)
        except requests.RequestException:
            return False
        return r.status_code == 200 and f"ready: {count} " in r.text
    wait_until(ready, timeout, message=f"{count} processors ready at {gateway.name}")


def processor_metric(pod, name):
    return metric_value(requests.get(pod.status_url + "/metrics", timeout=5).text, name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tls_pki import PKI
    return PKI(tmp_path_factory.mktemp("k8s-pki"))


@pytest.fixture
def cluster(tmp_path, seaweed, pki, request):
    c = Cluster(tmp_path, seaweed, pki, dns_refresh=getattr(request, "param", None))
    yield c
    c.stop()


# ---- (1) render and validate --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_the_renderer_produces_what_kubectl_kustomize_produces(name):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed: the manifests are rendered by kustomize_lite alone")
    out = subprocess.run([kubectl, "kustomize", str(KUSTOMIZATIONS[name])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out.stdout) if o}
    mine = {(o["kind"], o["metadata"]["name"]): o for o in rendered(name)}
    assert sorted(mine) == sorted(theirs)
    for key in mine:
        assert mine[key] == theirs[key], key


def test_the_kustomizations_produce_every_piece_the_issue_asks_for():
    objects = rendered("example")
    kinds = sorted((o["kind"], re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"])) for o in objects)
    assert kinds == sorted([
        ("Namespace", "prism"), ("ConfigMap", "prism-gateway"), ("ConfigMap", "prism-recipes"),
        ("Secret", "prism-s3-credentials"), ("Secret", "prism-processor-token"),
        ("Deployment", "prism-gateway"), ("Service", "prism-gateway"), ("PodDisruptionBudget", "prism-gateway"),
        ("Deployment", "prism-processor"), ("Service", "prism-processor"), ("PodDisruptionBudget", "prism-processor"),
        ("HorizontalPodAutoscaler", "prism-processor"), ("NetworkPolicy", "prism-processor"), ("CronJob", "prism-sweep"),
    ])
    assert all(o["metadata"].get("namespace") == "prism" for o in objects if o["kind"] != "Namespace")
    images = {c["image"] for o in workloads(objects) for c in kustomize_lite.pod_spec(o)["containers"]}
    assert images == {"registry.example.com/prism/prism-gateway:1.0.0", "registry.example.com/prism/prism-processor:1.0.0"}
    assert find(objects, "Deployment", "prism-gateway")["spec"]["replicas"] == 2
    assert "replicas" not in find(objects, "Deployment", "prism-processor")["spec"], "the HPA owns the processor count"
    assert find(objects, "Service", "prism-processor")["spec"]["clusterIP"] == "None"


def all_documents():
    docs = []
    for name in KUSTOMIZATIONS:
        docs += [(f"{name}: {o['kind']} {o['metadata']['name']}", o) for o in rendered(name)]
    for path in EXAMPLES:
        docs += [(f"{path.name}: {o['kind']} {o['metadata']['name']}", o) for o in kustomize_lite.load_yaml_documents(path)]
    return docs


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, "latest"])
def test_every_manifest_validates_strictly_against_the_kubernetes_schema(version):
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version
    version = latest_version() if version == "latest" else version
    failures = []
    docs = all_documents()
    for where, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except Exception as e:  # ValidationError, SchemaNotFoundError: both are failures here
            failures.append(f"{where}: {type(e).__name__}: {str(e)[:500]}")
    assert not failures, "\n".join(failures)
    print(f"{len(docs)} documents valid against Kubernetes {version} (strict)")


def test_strict_validation_rejects_a_misspelt_field():
    """The validator is not vacuous: a field the API does not have fails."""
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version
    doc = rendered("base")
    deployment = find(doc, "Deployment", "prism-processor")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/readyz", "port": 9090}}
    with pytest.raises(Exception, match="readinesProbe"):
        kubernetes_validate.validate(deployment, latest_version(), strict=True)


# ---- (2) every binary accepts what its manifest gives it ---------------------------------------


def containers_of(objects):
    for o in workloads(objects):
        for index, container in enumerate(kustomize_lite.pod_spec(o)["containers"]):
            yield f"{o['kind']} {o['metadata']['name']} {container['name']}", o, index


# Secrets the overlay leaves to the operator (cert-manager); the base's placeholders for the
# two the example overlay generates, so the base can be checked on its own too.
OUT_OF_BAND_SECRETS = {"prism-processor-tls", "prism-gateway-tls"}
BASE_SECRETS = {"prism-processor-token": {"token": b"a-test-token-0123456789abcdef"},
                "prism-s3-credentials": {"AWS_ACCESS_KEY_ID": b"test", "AWS_SECRET_ACCESS_KEY": b"test-secret"}}


def test_every_configmap_and_secret_a_pod_uses_exists_or_is_documented():
    objects = rendered("example")
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    readme = (KUBE / "README.md").read_text()
    for where, workload, index in containers_of(objects):
        spec = kustomize_lite.pod_spec(workload)
        container = spec["containers"][index]
        wanted = [("ConfigMap", v["configMap"]["name"]) for v in spec.get("volumes", []) if "configMap" in v]
        wanted += [("Secret", v["secret"]["secretName"]) for v in spec.get("volumes", []) if "secret" in v]
        for source in container.get("envFrom", []):
            wanted += [("ConfigMap", source["configMapRef"]["name"])] if "configMapRef" in source else \
                [("Secret", source["secretRef"]["name"])]
        for item in container.get("env", []):
            ref = item.get("valueFrom", {})
            if "secretKeyRef" in ref:
                wanted.append(("Secret", ref["secretKeyRef"]["name"]))
        for kind, name in wanted:
            if name in OUT_OF_BAND_SECRETS:
                assert f"`{name}`" in readme, f"{where}: {name} is neither generated nor documented"
            else:
                assert (kind, name) in present, f"{where}: {kind} {name} does not exist"


@pytest.mark.parametrize("kustomization,which", [("example", "gateway"), ("example", "processor"), ("example", "sweep"),
                                                 ("base", "gateway"), ("base", "processor"), ("base", "sweep")])
def test_every_setting_the_manifests_pass_is_accepted_by_the_binary(kustomization, which, tmp_path, pki):
    objects = rendered(kustomization)
    ca = pki.ca_cert.read_bytes()
    server_cert, server_key = pki.ca.issue("check-processor", "prism-processor", dns=["prism-processor"])
    client_cert, client_key = pki.ca.issue("check-gateway", "prism-gateway", server=False)
    secrets = {
        "prism-processor-tls": {"tls.crt": server_cert.read_bytes(), "tls.key": server_key.read_bytes(), "ca.crt": ca},
        "prism-gateway-tls": {"tls.crt": client_cert.read_bytes(), "tls.key": client_key.read_bytes(), "ca.crt": ca},
    }
    if kustomization == "base":
        secrets.update(BASE_SECRETS)
    workload = {"gateway": ("Deployment", "prism-gateway"), "processor": ("Deployment", "prism-processor"),
                "sweep": ("CronJob", "prism-sweep")}[which]
    sandbox = PodSandbox(objects, find(objects, *workload), tmp_path, secrets)
    env = sandbox.local_environment()
    result = subprocess.run([*sandbox.command(), "--check-config"], capture_output=True, text=True, env=env, timeout=30)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration OK" in result.stdout
    assert "not settings of this program" not in result.stdout, result.stdout
    assert "unknown setting" not in result.stderr, result.stderr
    # Mutual TLS is really on in the example: the mounted files were read and checked.
    if kustomization == "base":
        assert "tls = on" not in result.stdout and "processor_tls = on" not in result.stdout
    elif which == "gateway":
        assert re.search(r"processor_tls = on, trusting 1 CA.*client certificate", result.stdout), result.stdout
        assert "processor_token = set" in result.stdout
    elif which == "processor":
        assert re.search(r"tls = on.*client certificates required", result.stdout), result.stdout
        assert "auth_token = set" in result.stdout


def test_every_path_a_binary_writes_is_on_a_writable_volume():
    for where, workload, index in containers_of(rendered("example")):
        spec = kustomize_lite.pod_spec(workload)
        container = spec["containers"][index]
        env = _bare_sandbox(rendered("example"), container).environment()
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
        volumes = {v["name"]: v for v in spec["volumes"]}
        writable = [m["mountPath"] for m in container["volumeMounts"]
                    if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]]
        # The spool (gateway), $TMPDIR (libvips' large images, anything else): emptyDirs.
        paths = [env.get("TMPDIR", "/tmp")]
        if image_binary(container) == "prism-gateway":
            paths.append(env["PRISM_SPOOL_DIR"])
            assert env["PRISM_STORAGE"] == "s3", f"{where}: local storage needs a shared volume, not the image's /var/lib/prism"
        for path in paths:
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in writable), f"{where}: {path} is not writable"


def test_pods_run_restricted_as_nobody():
    passwd = {line.split(":")[0]: int(line.split(":")[2]) for line in Path("/etc/passwd").read_text().splitlines() if line}
    dockerfile = (REPO / "compose" / "Dockerfile").read_text()
    assert dockerfile.count("USER nobody") == 2
    for where, workload, index in containers_of(rendered("example")):
        spec = kustomize_lite.pod_spec(workload)
        pod, container = spec["securityContext"], spec["containers"][index]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == passwd["nobody"] == 65534, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert container == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                             "capabilities": {"drop": ["ALL"]}}, where
        assert spec["automountServiceAccountToken"] is False, where
    namespace = find(rendered("example"), "Namespace", "prism")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# ---- (3) ports, paths and names agree -----------------------------------------------------------


def container_port(container, name_or_number):
    if isinstance(name_or_number, int):
        assert name_or_number in [p["containerPort"] for p in container["ports"]]
        return name_or_number
    return next(p["containerPort"] for p in container["ports"] if p["name"] == name_or_number)


def labels_match(selector, labels):
    return selector and all(labels.get(k) == v for k, v in selector.items())


def test_ports_probes_and_names_agree_between_manifests_compose_and_the_binaries():
    objects = rendered("example")
    compose = compose_config()["services"]
    gateway = find(objects, "Deployment", "prism-gateway")
    processor = find(objects, "Deployment", "prism-processor")
    gw_container = gateway["spec"]["template"]["spec"]["containers"][0]
    p_container = processor["spec"]["template"]["spec"]["containers"][0]
    gw_env = _bare_sandbox(objects, gw_container).environment()
    p_env = _bare_sandbox(objects, p_container).environment()

    # The gateway's HTTP port: binary default, compose, the manifest's env, container and Service.
    http = container_port(gw_container, "http")
    assert http == int(gw_env["PRISM_GATEWAY_PORT"]) == int(binary_default("prism-gateway", "--port"))
    assert http == int(compose["gateway"]["environment"]["PRISM_GATEWAY_PORT"])
    assert any(p["target"] == http for p in compose["gateway"]["ports"])
    gw_service = find(objects, "Service", "prism-gateway")
    assert labels_match(gw_service["spec"]["selector"], gateway["spec"]["template"]["metadata"]["labels"])
    assert container_port(gw_container, gw_service["spec"]["ports"][0]["targetPort"]) == http

    # The processor's frame and status ports.
    frames, status = container_port(p_container, "frames"), container_port(p_container, "status")
    assert frames == int(p_env["PRISM_PROCESSOR_PORT"]) == int(binary_default("prism-processor", "--port"))
    assert status == int(p_env["PRISM_PROCESSOR_STATUS_PORT"]) == int(binary_default("prism-processor", "--status-port"))
    assert frames == int(compose["processor"]["environment"]["PRISM_PROCESSOR_PORT"])
    assert status == int(compose["processor"]["environment"]["PRISM_PROCESSOR_STATUS_PORT"])
    assert p_env["PRISM_PROCESSOR_HOST"] == p_env["PRISM_PROCESSOR_STATUS_HOST"] == "0.0.0.0"
    assert gw_env["PRISM_GATEWAY_HOST"] == "0.0.0.0"

    # The headless Service the gateways' --processor-dns names, on the frame port.
    p_service = find(objects, "Service", "prism-processor")
    assert p_service["spec"]["clusterIP"] == "None"
    assert labels_match(p_service["spec"]["selector"], processor["spec"]["template"]["metadata"]["labels"])
    service_ports = {p["name"]: container_port(p_container, p["targetPort"]) for p in p_service["spec"]["ports"]}
    assert service_ports == {"frames": frames, "status": status}
    assert gw_env["PRISM_PROCESSOR_DNS"] == f"{p_service['metadata']['name']}:{frames}"
    assert compose["gateway"]["environment"]["PRISM_PROCESSOR_DNS"] == f"processor:{frames}"
    assert gw_env["PRISM_AUTH_TOKEN"] == p_env["PRISM_AUTH_TOKEN"], "one token Secret for both sides"
    # With TLS the gateway checks the processors' certificates against that DNS name.
    assert gw_env.get("PRISM_PROCESSOR_TLS_SERVER_NAME", p_service["metadata"]["name"]) == p_service["metadata"]["name"]

    # Probes: the paths compose's health checks use, on the ports that serve them.
    probes = {(c["name"], kind): c[kind]["httpGet"] for c in (gw_container, p_container)
              for kind in ("readinessProbe", "livenessProbe", "startupProbe") if kind in c}
    assert probes[("gateway", "readinessProbe")]["path"] == "/readyz"
    assert probes[("gateway", "livenessProbe")]["path"] == "/healthz"
    assert probes[("processor", "readinessProbe")]["path"] == "/readyz"
    assert probes[("processor", "livenessProbe")]["path"] == "/healthz"
    for (name, _), probe in probes.items():
        container = gw_container if name == "gateway" else p_container
        assert container_port(container, probe["port"]) == (http if name == "gateway" else status)
    assert f"127.0.0.1:{http}/readyz" in " ".join(compose["gateway"]["healthcheck"]["test"])
    assert f"127.0.0.1:{status}/readyz" in " ".join(compose["processor"]["healthcheck"]["test"])

    # Only gateways reach the frame port.
    policy = find(objects, "NetworkPolicy", "prism-processor")
    assert labels_match(policy["spec"]["podSelector"]["matchLabels"], processor["spec"]["template"]["metadata"]["labels"])
    frame_rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == frames for p in r["ports"])]
    assert len(frame_rules) == 1 and len(frame_rules[0]["from"]) == 1
    assert labels_match(frame_rules[0]["from"][0]["podSelector"]["matchLabels"], gateway["spec"]["template"]["metadata"]["labels"])
    assert not labels_match(frame_rules[0]["from"][0]["podSelector"]["matchLabels"], processor["spec"]["template"]["metadata"]["labels"])

    # The HPA scales the processor Deployment; the PDBs select their pods.
    hpa = find(objects, "HorizontalPodAutoscaler", "prism-processor")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "prism-processor"}
    for pdb_name, deployment in (("prism-gateway", gateway), ("prism-processor", processor)):
        pdb = find(objects, "PodDisruptionBudget", pdb_name)
        assert labels_match(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])

    # The sweep is a subcommand of the gateway binary, with the gateways' own settings.
    sweep = find(objects, "CronJob", "prism-sweep")
    sweep_container = kustomize_lite.pod_spec(sweep)["containers"][0]
    assert sweep_container["args"] == ["sweep"]
    assert "sweep" in subprocess.run([BIN / "prism-gateway", "--help"], capture_output=True, text=True, timeout=30).stdout
    assert sweep_container["image"] == gw_container["image"]
    assert sweep_container["envFrom"] == gw_container["envFrom"]


def _bare_sandbox(objects, container):
    """A PodSandbox for reading a container's environment only (no volumes made)."""
    sandbox = PodSandbox.__new__(PodSandbox)
    sandbox.objects, sandbox.container = objects, container
    sandbox.secrets = {"prism-processor-tls": {}, "prism-gateway-tls": {}}
    return sandbox


def test_shutdown_budgets_and_resources_fit_the_settings():
    objects = rendered("example")
    gateway = find(objects, "Deployment", "prism-gateway")
    processor = find(objects, "Deployment", "prism-processor")
    gw_spec, p_spec = gateway["spec"]["template"]["spec"], processor["spec"]["template"]["spec"]
    gw_env = _bare_sandbox(objects, gw_spec["containers"][0]).environment()
    p_env = _bare_sandbox(objects, p_spec["containers"][0]).environment()

    # SIGTERM comes after preStop; both count against the grace period. An upload admitted just
    # before SIGTERM needs --upload-timeout plus its 3 s cleanup.
    pre_stop = gw_spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = parse_seconds(gw_env["PRISM_DRAIN_TIMEOUT"])
    assert drain >= parse_seconds(gw_env["PRISM_UPLOAD_TIMEOUT"]) + 3
    assert gw_spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    assert p_spec["terminationGracePeriodSeconds"] >= parse_seconds(p_env["PRISM_DRAIN_TIMEOUT"]) + 5
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    # The gateway's memory: docs/configuration.md sizes --max-upload-memory at the memory given
    # minus about 100 MB; the spool emptyDir must hold --max-spool.
    gw_resources = gw_spec["containers"][0]["resources"]
    assert parse_size(gw_resources["limits"]["memory"]) >= parse_size(gw_env["PRISM_MAX_UPLOAD_MEMORY"]) + 100 * 2**20
    spool = next(v for v in gw_spec["volumes"] if v["name"] == "spool")
    assert parse_size(spool["emptyDir"]["sizeLimit"]) > parse_size(gw_env["PRISM_MAX_SPOOL"])

    # Processors: one worker per core of the CPU limit (the default would count the node's).
    p_resources = p_spec["containers"][0]["resources"]
    assert int(p_env["PRISM_PROCESSOR_WORKERS"]) == int(p_resources["limits"]["cpu"]) == int(p_resources["requests"]["cpu"])
    # The processor limits malloc to one arena itself; the variable would override that.
    assert "MALLOC_ARENA_MAX" not in p_env


# ---- (4) real processes with the manifests' settings ------------------------------------------


def test_pods_started_as_the_manifests_say_serve_probes_uploads_and_the_sweep(cluster, seaweed):
    """Two processor pods behind the headless name, one gateway pod, over mutual TLS with the
    token from the Secret, storing in S3; every probe answers 200; the sweep CronJob's container
    runs against the same bucket."""
    for ip in ("127.0.0.2", "127.0.0.3"):
        cluster.processor(ip)
    cluster.publish(["127.0.0.2", "127.0.0.3"])
    gateway = cluster.gateway()
    wait_ready(gateway, 2)
    container = gateway.sandbox.container
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert requests.get(gateway.url + container[kind]["httpGet"]["path"], timeout=5).status_code == 200, kind
    for pod in cluster.processors.values():
        for kind in ("readinessProbe", "livenessProbe"):
            path = pod.sandbox.container[kind]["httpGet"]["path"]
            assert requests.get(pod.status_url + path, timeout=5).status_code == 200, kind
    with open(photo("Storm.jpg"), "rb") as f:
        answer = requests.post(gateway.url + "/v1/images", files={"file": f}, timeout=60)
    assert answer.status_code == 201, answer.text
    manifest = answer.json()
    assert manifest["variants"][0]["url"].startswith("https://images.example.com/")
    assert len(seaweed.keys(cluster.bucket, f"images/{manifest['id']}/")) == 7
    assert sum(processor_metric(p, "prism_processor_tls_handshake_failures_total") for p in cluster.processors.values()) == 0
    # The processors require TLS: the gateway connected with the client certificate.
    assert "PRISM_TLS_CLIENT_CA" in next(iter(cluster.processors.values())).env

    sandbox = cluster.sandbox("CronJob", "prism-sweep", "sweep")
    env = cluster.gateway_environment(sandbox, free_port())
    sweep = subprocess.run(sandbox.command(), capture_output=True, text=True, env=env, timeout=60)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    assert re.search(r"images=\d+ orphaned_uploads=0", sweep.stdout), sweep.stdout


class Uploader:
    """Client threads uploading until stopped; every outcome is kept (201, or what went wrong).

    `retry` names the failures a client retries, each a case where a retry is safe: "refused"
    (the connect was refused, nothing was sent) and "closed" (the connection was closed or
    reset without an answer: the request may or may not have arrived, so every upload carries
    an Idempotency-Key and its retry replays it; a replay of a committed upload answers its
    manifest, so no image is made twice). Without `retry`, any failure counts."""

    def __init__(self, url_of, threads=2, images=("Dune.jpg", "Garden.jpg", "Wood.jpg"), retry=(), fresh_connections=False):
        self.url_of = url_of
        self.retry = set(retry)
        self.fresh_connections = fresh_connections
        self.bodies = [photo(name).read_bytes() for name in images]
        self.results, self.ids = [], []
        self.retried = {"refused": 0, "closed": 0, "in-use": 0}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, index):
        session = requests.Session()
        n = index
        while not self.stopping.is_set():
            body = self.bodies[n % len(self.bodies)]
            n += 1
            if self.fresh_connections:
                # A connection per upload, closed by the client after its answer. (Not a
                # "Connection: close" header: the gateway closes after answering such a request
                # but does not say so in the answer, so requests would reuse the connection.)
                with requests.Session() as fresh:
                    outcome = self.one(fresh, body)
            else:
                outcome = self.one(session, body)
            with self.lock:
                self.results.append(outcome)

    def one(self, session, body):
        key = str(uuid.uuid4())
        deadline = time.monotonic() + 30
        while True:
            headers = {"Content-Type": "image/jpeg", "Idempotency-Key": key}
            try:
                r = session.post(self.url_of() + "/v1/images", data=body, headers=headers, timeout=60)
            except requests.ConnectionError as e:
                text = str(e)
                kind = "refused" if "Connection refused" in text else \
                    "closed" if ("RemoteDisconnected" in text or "Connection reset" in text or "Connection aborted" in text) else None
                if kind in self.retry and time.monotonic() < deadline:
                    with self.lock:
                        self.retried[kind] += 1
                    time.sleep(0.05)
                    continue
                return f"{type(e).__name__}: {e}"
            if r.status_code == 409 and "idempotency-key-in-use" in r.text and "closed" in self.retry and time.monotonic() < deadline:
                with self.lock:
                    self.retried["in-use"] += 1
                time.sleep(float(r.headers.get("Retry-After", "1")))
                continue
            if r.status_code != 201:
                return f"{r.status_code} {r.text[:300]} (X-Request-Id {r.headers.get('X-Request-Id')})"
            with self.lock:
                self.ids.append(r.json()["id"])
            return 201

    def ok(self):
        with self.lock:
            return self.results.count(201)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(120)
        return self.results


def manifests(seaweed, bucket):
    """Every image id with a manifest in the bucket."""
    pages = seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="images/")
    return {o["Key"].split("/")[1] for page in pages for o in page.get("Contents", []) if o["Key"].endswith("/manifest.json")}


@pytest.mark.parametrize("cluster", ["1s"], indirect=True)
def test_processors_scaled_2_4_1_while_uploads_run_fail_no_upload(cluster):
    """What the HPA does: pods added (ready first, then in DNS) and removed (SIGTERM and out of
    DNS at about the same moment, in either order): the gateway re-resolves the headless name,
    connects to new pods, and takes GoAway from leaving ones, whose calls finish."""
    for ip in ("127.0.0.2", "127.0.0.3"):
        cluster.processor(ip)
    cluster.publish(["127.0.0.2", "127.0.0.3"])
    gateway = cluster.gateway()
    wait_ready(gateway, 2)
    uploads = Uploader(lambda: gateway.url, threads=3)
    try:
        wait_until(lambda: uploads.ok() >= 3, 60, message="uploads under way with 2 processors")

        # 2 -> 4: new pods become ready, then the endpoints (DNS) list them.
        for ip in ("127.0.0.4", "127.0.0.5"):
            cluster.processor(ip)
        cluster.publish(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"])
        wait_ready(gateway, 4)
        new = [cluster.processors[ip] for ip in ("127.0.0.4", "127.0.0.5")]
        wait_until(lambda: all(processor_metric(p, "prism_processor_calls_succeeded_total") >= 1 for p in new), 60,
                   message="the new processors to take calls")

        # 4 -> 1: three pods terminate while busy. One gets SIGTERM before it leaves DNS, the
        # others leave DNS first: the kubelet and the endpoints controller race.
        leaving = [cluster.processors[ip] for ip in ("127.0.0.3", "127.0.0.4", "127.0.0.5")]
        wait_until(lambda: sum(processor_metric(p, "prism_processor_jobs_running") for p in leaving) >= 1, 30,
                   message="a leaving processor to be busy")
        leaving[0].signal(signal.SIGTERM)
        cluster.publish(["127.0.0.2"])
        for pod in leaving[1:]:
            pod.signal(signal.SIGTERM)
        for pod in leaving:
            assert pod.proc.wait(60) == 0, pod.log()[-2000:]
            assert "draining" in pod.log()
        wait_ready(gateway, 1)
        made = uploads.ok()
        wait_until(lambda: uploads.ok() >= made + 3, 60, message="three more uploads on the one processor left")
    finally:
        results = uploads.stop()
    failures = [r for r in results if r != 201]
    print(f"{len(results)} uploads while scaling 2 -> 4 -> 1: {len(failures)} failed")
    assert results and not failures, failures[:10]
    assert processor_metric(cluster.processors["127.0.0.2"], "prism_processor_calls_succeeded_total") >= 3


@pytest.mark.parametrize("clients", ["connection-per-upload", "keep-alive"])
def test_a_gateway_replaced_under_load_fails_no_upload_for_clients_that_retry(cluster, seaweed, clients):
    """A rolling update of the gateway on one address: SIGTERM (preStop is skipped: no
    endpoints to wait for here), the old gateway stops accepting and finishes its uploads, the
    new one starts on the same port.

    connection-per-upload: clients open a connection for each upload and retry only a refused
    connect (nothing was sent). keep-alive: clients keep their connections, which the old
    gateway closes at SIGTERM when idle, so they also retry a connection closed without an
    answer, replaying the upload's Idempotency-Key. Either way every upload succeeds, and none
    is made twice."""
    retry = ("refused",) if clients == "connection-per-upload" else ("refused", "closed")
    for ip in ("127.0.0.2", "127.0.0.3"):
        cluster.processor(ip)
    cluster.publish(["127.0.0.2", "127.0.0.3"])
    before = manifests(seaweed, cluster.bucket)
    old = cluster.gateway(tag="gateway-old")
    wait_ready(old, 2)
    uploads = Uploader(lambda: old.url, threads=3, retry=retry, fresh_connections=clients == "connection-per-upload")
    try:
        wait_until(lambda: uploads.ok() >= 3, 60, message="uploads under way through the old gateway")
        wait_until(lambda: metric_value(requests.get(old.url + "/metrics", timeout=5).text, "prism_gateway_uploads_in_flight") >= 1,
                   30, message="an upload in flight on the old gateway")
        old.signal(signal.SIGTERM)
        wait_until(lambda: refuses(old.url), 30, message="the old gateway to stop accepting")
        new = cluster.gateway(port=old.port, tag="gateway-new")
        assert old.proc.wait(60) == 0, old.log()[-2000:]
        wait_ready(new, 2)
        made = uploads.ok()
        wait_until(lambda: uploads.ok() >= made + 3, 60, message="three more uploads through the new gateway")
    finally:
        results = uploads.stop()
    failures = [r for r in results if r != 201]
    print(f"{clients}: {len(results)} uploads across the gateway roll, retried: {uploads.retried}; {len(failures)} failed")
    assert results and not failures, failures[:10]
    assert len(set(uploads.ids)) == len(uploads.ids) == len(results)
    assert manifests(seaweed, cluster.bucket) - before == set(uploads.ids), "an image made twice, or one missing"
    served_new = metric_value(requests.get(new.url + "/metrics", timeout=5).text, "prism_gateway_uploads_total", 'outcome="ok"')
    assert served_new >= 3


def accepted_by(pid, client_port):
    """Whether process `pid` holds the server side of the TCP connection from `client_port`
    (accept() has returned it: an fd of the process points at the socket's inode)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == client_port:
            inodes.add(fields[9])
    fds = Path(f"/proc/{pid}/fd")
    try:
        links = {os.readlink(fd) for fd in fds.iterdir()}
    except OSError:
        return False
    return any(f"socket:[{inode}]" in links for inode in inodes)


def test_a_connection_accepted_before_sigterm_gets_its_upload_answered(cluster):
    cluster.processor("127.0.0.2")
    cluster.publish(["127.0.0.2"])
    gateway = cluster.gateway()
    wait_ready(gateway, 1)
    body = photo("Dune.jpg").read_bytes()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        client_port = sock.getsockname()[1]
        wait_until(lambda: accepted_by(gateway.pid, client_port), 10, message="the gateway to accept the connection")
        gateway.signal(signal.SIGTERM)
        wait_until(lambda: refuses(gateway.url), 30, message="the gateway to stop accepting")
        answer = b""
        try:
            sock.sendall(b"POST /v1/images HTTP/1.1\r\nHost: prism\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError as e:
            print(f"the upload on the accepted connection: {e}")
    assert answer.startswith(b"HTTP/1.1 201"), answer[:200]
    # ...and says it is the last answer on this connection, so no client reuses it.
    assert b"\r\nconnection: close\r\n" in answer.split(b"\r\n\r\n")[0].lower() + b"\r\n", answer[:400]


def refuses(url):
    try:
        requests.get(url + "/healthz", timeout=2)
    except requests.ConnectionError:
        return True
    return False
