"""Running Prism like production: compose, configuration, logs, metrics, drain, make run."""
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import BIN, REPO, FakeDNS, Gateway, Processor, Service, edge, free_port, metric_value, photo, wait_until

COMPOSE = REPO / "compose" / "docker-compose.yml"


def compose_config(token="a-test-token-0123456789abcdef"):
    env = {k: v for k, v in os.environ.items() if k != "PRISM_AUTH_TOKEN"}
    if token:
        env["PRISM_AUTH_TOKEN"] = token
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_ships_no_processor_token_and_refuses_to_start_without_one():
    env = {k: v for k, v in os.environ.items() if k != "PRISM_AUTH_TOKEN"}
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode != 0 and "set PRISM_AUTH_TOKEN" in result.stderr
    config = compose_config(token="from-the-operator")
    for service in ("processor", "gateway"):
        assert config["services"][service]["environment"]["PRISM_AUTH_TOKEN"] == "from-the-operator"


def test_compose_file_is_valid_and_has_the_production_shape():
    config = compose_config()
    services = config["services"]
    assert set(services) == {"gateway", "processor", "seaweedfs"}
    processor = services["processor"]
    # Scalable: no fixed host port, no container name.
    assert "ports" not in processor and "container_name" not in processor
    assert processor["build"]["target"] == "processor"
    gateway = services["gateway"]
    assert gateway["environment"]["PRISM_PROCESSOR_DNS"] == "processor:7070"
    assert gateway["environment"]["PRISM_STORAGE"] == "s3"
    assert gateway["environment"]["PRISM_S3_CREATE_BUCKET"] == "true"
    assert gateway["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    for name, service in services.items():
        assert "healthcheck" in service, name
    dockerfile = (REPO / "compose" / "Dockerfile").read_text()
    assert re.search(r"^FROM swift:\S+ AS build", dockerfile, re.M)
    assert re.search(r"^FROM debian:bookworm-slim AS processor", dockerfile, re.M)
    assert re.search(r"^FROM debian:bookworm-slim AS gateway", dockerfile, re.M)


def dockerfile_env(target):
    """ENV lines of one stage of the Dockerfile."""
    env, stage = {}, None
    for line in (REPO / "compose" / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stage = line.split()[-1]
        elif line.startswith("ENV ") and stage == target:
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.mark.parametrize("service,binary", [("processor", "prism-processor"), ("gateway", "prism-gateway")])
def test_every_setting_compose_passes_is_accepted_by_the_binary(service, binary):
    definition = compose_config()["services"][service]
    env = {k: str(v) for k, v in (definition.get("environment") or {}).items()}
    env.update(dockerfile_env(service))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PRISM_", "AWS_"))}
    command = definition.get("command") or []
    result = subprocess.run([BIN / binary, *command, "--check-config"], capture_output=True, text=True,
                            env={**clean, **env}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "not settings of this program" not in result.stdout, result.stdout
    assert "unknown setting" not in result.stderr, result.stderr


def test_unknown_variables_are_reported():
    result = subprocess.run([BIN / "prism-processor", "--check-config"], capture_output=True, text=True,
                            env={**os.environ, "PRISM_PROCESSOR_WORKRES": "4"}, timeout=30)
    assert result.returncode == 0
    assert "PRISM_PROCESSOR_WORKRES" in result.stdout and "unknown setting ignored" in result.stderr


class NamedProcessor(Processor):
    """A processor on its own loopback address, like one compose replica."""

    def __init__(self, log_dir, ip, port, env=None):
        super().__init__(log_dir, "--workers", "1", env=env, name=f"processor-{ip}", host=ip, port=port)


def test_compose_topology_as_local_processes(services, seaweed, tmp_path):
    """One DNS name with several processors and the S3 backend, as compose runs it, scaled up and down."""
    dns = FakeDNS(tmp_path, "processor")
    port = free_port()
    replicas = {ip: services.add(NamedProcessor(tmp_path, ip, port, env={"PRISM_AUTH_TOKEN": "compose-token"}))
                for ip in ("127.0.0.2", "127.0.0.3")}
    dns.publish(replicas)
    env = {
        **seaweed.gateway_env(),
        # One name, one address per replica, as Docker's DNS gives for a scaled service.
        **dns.env(),
        "PRISM_PROCESSOR_DNS": f"processor:{port}", "PRISM_PROCESSOR_DNS_REFRESH": "200ms",
        "PRISM_AUTH_TOKEN": "compose-token", "PRISM_STORAGE": "s3", "PRISM_S3_ENDPOINT": seaweed.endpoint,
        "PRISM_S3_BUCKET": "compose", "PRISM_S3_CREATE_BUCKET": "true", "PRISM_LOG_FORMAT": "json",
    }
    gateway = services.gateway((), env=env)
    gateway.wait_processors(2)
    first = gateway.upload(photo("Storm.jpg"))
    assert first.status_code == 201, first.text
    assert len(seaweed.keys("compose", f"images/{first.json()['id']}/")) == 7
    assert all(p.metric("prism_processor_calls_succeeded_total") >= 1 for p in replicas.values())

    # Scale up: a third replica appears in DNS.
    third = services.add(NamedProcessor(tmp_path, "127.0.0.4", port, env={"PRISM_AUTH_TOKEN": "compose-token"}))
    dns.publish(("127.0.0.2", "127.0.0.3", "127.0.0.4"))
    gateway.wait_processors(3)

    # Scale down: a replica stops (SIGTERM, as compose does) and leaves DNS.
    leaving = replicas["127.0.0.2"]
    leaving.signal(signal.SIGTERM)
    dns.publish(("127.0.0.3", "127.0.0.4"))
    assert leaving.proc.wait(90) == 0
    gateway.wait_processors(2)
    for _ in range(3):
        response = gateway.upload(photo("Dune.jpg"))
        assert response.status_code == 201, response.text
    assert third.metric("prism_processor_calls_succeeded_total") >= 1
    assert metric_value(gateway.metrics(), "prism_gateway_processor_connections", 'state="ready"') == 2


def test_a_failed_dns_lookup_keeps_the_processors_and_a_missing_name_drops_them(services, tmp_path):
    """A lookup that fails (a DNS timeout or SERVFAIL: EAI_AGAIN) says nothing about the
    processors: the gateway keeps the last answer and uploads go on. An answer without the name
    (NXDOMAIN, as a headless Service with no ready pod gives) retires them.

    The name is answered by FakeDNS (conftest.py): no DNS server of our own can be put in
    front of glibc here."""
    dns = FakeDNS(tmp_path, "processor")
    port = free_port()
    replicas = [services.add(NamedProcessor(tmp_path, ip, port)) for ip in ("127.0.0.2", "127.0.0.3")]
    dns.publish(("127.0.0.2", "127.0.0.3"))
    env = {**dns.env(), "PRISM_PROCESSOR_DNS": f"processor:{port}", "PRISM_PROCESSOR_DNS_REFRESH": "200ms"}
    gateway = services.gateway((), env=env)
    gateway.wait_processors(2)
    assert gateway.upload(photo("Dune.jpg")).status_code == 201

    dns.fail()
    wait_until(lambda: gateway.log().count("processor name lookup failed") >= 3, 60,
               message="three failed lookups")
    assert metric_value(gateway.metrics(), "prism_gateway_processor_connections", 'state="ready"') == 2
    response = gateway.upload(photo("Storm.jpg"))
    assert response.status_code == 201, response.text
    assert "processor no longer in DNS" not in gateway.log()

    # An answer: the name is gone.
    dns.publish([])
    wait_until(lambda: gateway.log().count("processor no longer in DNS") == 2, 60, message="both processors retired")
    response = gateway.upload(photo("Dune.jpg"))
    assert response.status_code == 503, response.text
    assert all(p.alive() for p in replicas)


def test_metrics_move_on_both_services(services):
    processors = [services.processor(), services.processor()]
    gateway = services.gateway(processors)
    gateway.wait_processors(2)
    before = gateway.metrics()
    assert metric_value(before, "prism_gateway_processor_connections", 'state="ready"') == 2
    for name in ("Garden.jpg", "Wood.jpg"):
        assert gateway.upload(photo(name)).status_code == 201
    assert gateway.upload(edge("not-an-image.txt")).status_code == 415
    after = gateway.metrics()
    assert metric_value(after, "prism_gateway_uploads_total", 'outcome="ok"') == 2
    assert metric_value(after, "prism_gateway_uploads_total", 'outcome="failed"') == 1
    assert metric_value(after, "prism_gateway_uploads_in_flight") == 0
    assert metric_value(after, "prism_gateway_requests_total", 'method="POST",route="/v1/images",status="201"') == 2
    assert metric_value(after, "prism_gateway_requests_total", 'method="POST",route="/v1/images",status="415"') == 1
    assert metric_value(after, "prism_gateway_upload_stage_seconds_count", 'stage="total"') == 2
    assert metric_value(after, "prism_gateway_upload_stage_seconds_count", 'stage="receive"') == 3
    assert metric_value(after, "prism_gateway_variant_seconds_count") == 10
    assert metric_value(after, "prism_gateway_bytes_stored_total") > photo("Garden.jpg").stat().st_size
    assert "prism_gateway_call_retries_total" in after
    started = sum(p.metric("prism_processor_calls_started_total") for p in processors)
    assert started >= 3
    texts = [p.metrics() for p in processors]
    assert sum(metric_value(t, "prism_processor_variant_seconds_count") for t in texts) == 10
    assert sum(metric_value(t, "prism_processor_decode_seconds_count") for t in texts) >= 2
    assert sum(metric_value(t, "prism_processor_calls_failed_total", 'code="invalid_argument",reason="not_an_image"') for t in texts) >= 1
    assert all(metric_value(t, "prism_processor_jobs_queued") == 0 for t in texts)
    assert all("prism_processor_queue_wait_seconds_bucket" in t for t in texts)


def test_request_id_follows_an_upload_into_the_processor_logs(services):
    processor = services.processor("--log-format", "json")
    gateway = services.gateway([processor], "--log-format", "json")
    gateway.wait_processors(1)
    with open(photo("Dune.jpg"), "rb") as f:
        response = requests.post(gateway.url + "/v1/images", files={"file": f}, headers={"X-Request-Id": "trace-4711"}, timeout=60)
    assert response.status_code == 201
    assert response.headers["X-Request-Id"] == "trace-4711"
    wait_until(lambda: '"request_id":"trace-4711"' in gateway.log(), message="the id in the gateway log")
    wait_until(lambda: '"request_id":"trace-4711"' in processor.log(), message="the id in the processor log")
    generated = requests.get(gateway.url + "/v1/recipes", timeout=60).headers["X-Request-Id"]
    assert len(generated) >= 16


RECIPES = str(Path(__file__).parent / "recipes_for_tests.json")


def test_gateway_sigterm_finishes_the_upload_in_flight_then_exits(services):
    processors = [services.processor(), services.processor()]
    # Pings far apart and a long drain: the processors are stopped for a while below without
    # being dropped, and without the upload being cut.
    gateway = services.gateway(processors, "--processor-ping-interval", "300s", "--processor-ping-timeout", "300s",
                               "--drain-timeout", "300s")
    gateway.wait_processors(2)
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=gateway.upload(photo("Garden.jpg"))))
    # The processors are stopped until the gateway drains: the upload is surely still in flight
    # then, however slowly this machine runs.
    for p in processors:
        p.signal(signal.SIGSTOP)
    try:
        thread.start()
        wait_until(lambda: metric_value(gateway.metrics(), "prism_gateway_uploads_in_flight") == 1, message="the upload to be processing")
        gateway.signal(signal.SIGTERM)
        # No new connections once draining, while the gateway is still running its upload...
        wait_until(lambda: refuses_connections(gateway.url + "/healthz"), message="the gateway to stop accepting")
        assert gateway.alive() and thread.is_alive(), "the gateway refused new connections only once it had finished"
    finally:
        for p in processors:
            p.signal(signal.SIGCONT)
    thread.join(120)
    # ...but the upload in flight completes.
    assert result["r"].status_code == 201, result["r"].text
    assert gateway.proc.wait(90) == 0
    assert gateway.stored_files(), "the finished upload is stored"


def refuses_connections(url):
    try:
        requests.get(url, timeout=60)
    except requests.ConnectionError:
        return True
    return False


def test_processor_sigterm_under_load_fails_no_upload(services):
    processors = [services.processor(), services.processor()]
    gateway = services.gateway(processors, "--recipes", RECIPES)
    gateway.wait_processors(2)
    statuses = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            statuses.append(gateway.upload(edge("large-19mp.jpg"), recipe="pair").status_code)

    clients = [threading.Thread(target=client) for _ in range(2)]
    for c in clients:
        c.start()
    wait_until(lambda: processors[0].metric("prism_processor_jobs_running") >= 1, message="the first processor to be busy")
    processors[0].signal(signal.SIGTERM)
    assert processors[0].proc.wait(90) == 0
    # Uploads go on against the one processor left.
    made = statuses.count(201)
    wait_until(lambda: statuses.count(201) >= made + 2, 60, message="two more uploads made after the processor left")
    stop.set()
    for c in clients:
        c.join(120)
    assert statuses and all(s == 201 for s in statuses), statuses
    assert processors[1].metric("prism_processor_calls_succeeded_total") >= 2
    assert "draining" in processors[0].log()


def test_make_run_starts_prism_and_stops_it_on_ctrl_c(tmp_path):
    ports = {name: str(free_port()) for name in ("GATEWAY", "PROCESSOR1", "PROCESSOR2", "PROCESSOR1_STATUS", "PROCESSOR2_STATUS")}
    env = {**os.environ, "PRISM_RUN_CONFIGURATION": "debug", "PRISM_DATA_DIR": str(tmp_path / "data"),
           "PRISM_RUN_LOG_DIR": str(tmp_path / "logs"), **{f"PRISM_RUN_{k}_PORT": v for k, v in ports.items()}}
    run = subprocess.Popen([REPO / "scripts" / "run-local.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = run.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "Prism is running" in text, text
        command = next(l.strip() for l in lines if l.strip().startswith("curl -F"))
        assert f":{ports['GATEWAY']}/v1/images" in command
        upload = subprocess.run(command.replace("photo.jpg", str(photo("Blinds.jpg"))), shell=True,
                                capture_output=True, text=True, timeout=60)
        assert '"variants"' in upload.stdout, upload.stdout + upload.stderr
        assert list((tmp_path / "data" / "images").iterdir())
    finally:
        os.killpg(run.pid, signal.SIGINT)
        rest, _ = run.communicate(timeout=60)
    assert "stopped." in rest
    for port in ports.values():
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
