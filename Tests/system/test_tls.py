"""TLS on the processor port (issue 8, item 6), against the real binaries.

Certificates are made per session by tls_pki.py: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate, and certificates from a second CA that nobody trusts. The
tests check what a person operating Prism would see: uploads that work, handshakes that fail
fast with the reason in the log, plain and TLS peers that meet and part clearly, and a silent
TCP connection that the handshake timeout closes. The machine is shared and can stall for ten
seconds or more: a timing bound sits against the alternative it rules out (a handshake timeout
or upload deadline the test sets two minutes away), next to the reason itself (the error, the
log line). Every test prints what it measured.
"""
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest
import requests

from conftest import BIN, FakeDNS, Processor, free_port, photo, wait_until
from test_processor_faults import Frame, hello
from tls_pki import PKI


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


def tls_flags(pki, client_ca=False):
    flags = ["--tls-cert", pki.server_cert, "--tls-key", pki.server_key]
    if client_ca:
        flags += ["--tls-client-ca", pki.ca_cert]
    return flags


def read_frame(sock, timeout=60):
    """The next frame from a socket (plain or TLS), or None at end of stream."""
    sock.settimeout(timeout)
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    length = struct.unpack(">I", data[:4])[0]
    return Frame(data[4:4 + length])


def tls_hello(processor, ca, cert=None, key=None, server_hostname="localhost"):
    """Opens TLS to `processor`, sends a Hello and returns what came back: ("hello", frame),
    ("error", frame) or ("tls", reason) when TLS itself failed (handshake or an alert after it,
    as TLS 1.3 reports a refused client certificate)."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert:
        context.load_cert_chain(str(cert), str(key))
    raw = socket.create_connection((processor.host, processor.port), timeout=60)
    try:
        with context.wrap_socket(raw, server_hostname=server_hostname) as sock:
            sock.sendall(hello())
            answer = read_frame(sock)
            if answer is None:
                return "tls", "closed without a frame"
            return answer.kind, answer
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
        return "tls", str(e)
    finally:
        raw.close()


def upload_timed(gateway, name="Garden.jpg"):
    start = time.monotonic()
    response = gateway.upload(photo(name), timeout=150)
    return response, time.monotonic() - start


# For gateways whose processors cannot be reached: an upload that waited for one would be
# answered only at this deadline.
FAR_DEADLINE = ["--upload-timeout", "120s"]


def assert_unavailable_quickly(gateway):
    """The upload is refused at once (the gateway must have FAR_DEADLINE)."""
    response, elapsed = upload_timed(gateway)
    print(f"upload answered {response.status_code} in {elapsed:.2f} s: {response.text[:200]}")
    assert response.status_code == 503, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/no-processors"), problem
    # Nothing internal reaches the client: no TLS reason, no file path, no address.
    assert "TLS" not in response.text and ".pem" not in response.text and "127.0.0.1" not in response.text
    assert elapsed < 60, f"took {elapsed:.1f} s: waited for a processor, not refused at once"
    return problem


def log_line(service, *needles, timeout=60):
    """The first log line of `service` containing every needle (waits for it)."""
    def find():
        return next((l for l in service.log().splitlines() if all(n in l for n in needles)), None)
    line = wait_until(find, timeout, 0.05, f"a {service.name} log line with {needles}")
    print(line)
    return line


def run_c(c_client, processor, tmp_path, *flags):
    out = tmp_path / "c-out.webp"
    result = subprocess.run(
        [str(c_client), "--host", processor.host, "--port", str(processor.port), "--in", str(photo("Garden.jpg")),
         "--out", str(out), "--width", "200", "--height", "200", "--format", "webp", *map(str, flags)],
        capture_output=True, text=True, timeout=150,
    )
    print(f"prism-call {' '.join(map(str, flags))} -> {result.returncode}: {result.stdout.strip()} {result.stderr.strip()}")
    return result


# ---- (1) gateway -> processor over TLS ----------------------------------------------------------

def test_gateway_uploads_through_a_tls_processor(services, pki):
    processor = services.processor(*tls_flags(pki))
    gateway = services.gateway([processor], "--processor-tls-ca", pki.ca_cert)
    gateway.wait_processors(1)
    response, elapsed = upload_timed(gateway)
    print(f"upload over TLS: {response.status_code} in {elapsed:.2f} s")
    assert response.status_code == 201, response.text
    assert len(response.json()["variants"]) >= 5
    assert processor.metric("prism_processor_calls_succeeded_total") >= 1
    assert processor.metric("prism_processor_tls_handshake_failures_total") == 0
    assert "tls=" in log_line(processor, "processor listening", "certificate expires")


def test_the_server_name_defaults_to_the_host_and_can_be_set(services, pki):
    # The certificate names localhost only: reaching the processor as localhost, or naming it
    # with --processor-tls-server-name, passes the check.
    processor = services.processor("--tls-cert", pki.named_server_cert, "--tls-key", pki.named_server_key)
    by_name = services.gateway([f"localhost:{processor.port}"], "--processor-tls-ca", pki.ca_cert)
    by_name.wait_processors(1)
    assert by_name.upload(photo("Dune.jpg")).status_code == 201
    named = services.gateway([processor], "--processor-tls-ca", pki.ca_cert, "--processor-tls-server-name", "localhost")
    named.wait_processors(1)
    assert named.upload(photo("Dune.jpg")).status_code == 201


def test_processors_found_through_dns_are_checked_against_the_dns_name(services, pki, tmp_path):
    # Two replicas behind one name, as compose scales a service; their certificate carries
    # only that name, so checking the resolved addresses instead would fail.
    dns = FakeDNS(tmp_path, "processor")
    dns.publish(("127.0.0.2", "127.0.0.3"))
    port = free_port()
    replicas = [services.add(Processor(tmp_path, "--workers", "1", "--tls-cert", pki.service_cert,
                                       "--tls-key", pki.service_key, name=f"processor-{ip}", host=ip, port=port))
                for ip in ("127.0.0.2", "127.0.0.3")]
    gateway = services.gateway((), "--processor-tls-ca", pki.ca_cert, env=dns.env(), dns=f"processor:{port}")
    gateway.wait_processors(2)
    for _ in range(2):
        assert gateway.upload(photo("Storm.jpg")).status_code == 201
    assert all(p.metric("prism_processor_calls_started_total") >= 1 for p in replicas)


def test_a_tls_processor_drains_on_sigterm_without_failing_an_upload(services, pki):
    # GoAway, then a half-close once the calls are done: inside TLS that is close_notify and a
    # TCP half-close, which the gateway must take as the end of the connection like plain EOF.
    processors = [services.processor(*tls_flags(pki)), services.processor(*tls_flags(pki))]
    gateway = services.gateway(processors, "--processor-tls-ca", pki.ca_cert)
    gateway.wait_processors(2)
    statuses, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            statuses.append(gateway.upload(photo("Storm.jpg")).status_code)

    clients = [threading.Thread(target=client) for _ in range(2)]
    for c in clients:
        c.start()
    wait_until(lambda: processors[0].metric("prism_processor_jobs_running") >= 1, message="the first processor to be busy")
    start = time.monotonic()
    processors[0].signal(signal.SIGTERM)
    assert processors[0].proc.wait(60) == 0
    print(f"TLS processor drained and exited {time.monotonic() - start:.2f} s after SIGTERM")
    made = statuses.count(201)
    wait_until(lambda: statuses.count(201) >= made + 2, 60, message="two more uploads after the processor left")
    stop.set()
    for c in clients:
        c.join(120)
    assert statuses and all(s == 201 for s in statuses), statuses
    assert "draining" in processors[0].log()


# ---- (2) mutual TLS -----------------------------------------------------------------------------

def test_mutual_tls_refuses_clients_without_a_trusted_certificate(services, pki):
    processor = services.processor(*tls_flags(pki, client_ca=True))

    kind, detail = tls_hello(processor, pki.ca_cert)
    print("no client certificate:", kind, detail)
    assert kind == "tls"
    log_line(processor, "TLS handshake failed", "presented no certificate")

    kind, detail = tls_hello(processor, pki.ca_cert, pki.other_client_cert, pki.other_client_key)
    print("certificate from another CA:", kind, detail)
    assert kind == "tls"
    log_line(processor, "TLS handshake failed", "not signed by the CA in --tls-client-ca")

    kind, answer = tls_hello(processor, pki.ca_cert, pki.client_cert, pki.client_key)
    assert kind == "hello", answer
    assert processor.metric("prism_processor_tls_handshake_failures_total") == 2


def test_gateway_without_a_client_certificate_gets_503_and_the_reason_in_its_log(services, pki):
    processor = services.processor(*tls_flags(pki, client_ca=True))
    gateway = services.gateway([processor], "--processor-tls-ca", pki.ca_cert, *FAR_DEADLINE)
    log_line(gateway, "processor connection ended", "client certificate")
    assert_unavailable_quickly(gateway)


def test_gateway_with_a_client_certificate_from_another_ca_is_refused(services, pki):
    processor = services.processor(*tls_flags(pki, client_ca=True))
    gateway = services.gateway([processor], "--processor-tls-ca", pki.ca_cert, *FAR_DEADLINE,
                               "--processor-tls-cert", pki.other_client_cert, "--processor-tls-key", pki.other_client_key)
    log_line(gateway, "processor connection ended", "unknown CA")
    assert_unavailable_quickly(gateway)


def test_gateway_with_the_right_client_certificate_uploads(services, pki):
    processor = services.processor(*tls_flags(pki, client_ca=True))
    gateway = services.gateway([processor], "--processor-tls-ca", pki.ca_cert,
                               "--processor-tls-cert", pki.client_cert, "--processor-tls-key", pki.client_key)
    gateway.wait_processors(1)
    response, elapsed = upload_timed(gateway)
    print(f"upload over mutual TLS: {response.status_code} in {elapsed:.2f} s")
    assert response.status_code == 201, response.text


# ---- (3) the gateway does not trust the processor ----------------------------------------------

def test_unknown_ca_answers_503_quickly_and_logs_the_reason_and_keeps_retrying(services, pki):
    processor = services.processor(*tls_flags(pki))
    gateway = services.gateway([processor], "--processor-tls-ca", pki.other_ca_cert, *FAR_DEADLINE,
                               "--processor-ping-interval", "200ms")
    line = log_line(gateway, "processor connection ended", "certificate verify failed")
    assert "unknown CA" in line and "--processor-tls-ca" in line
    assert_unavailable_quickly(gateway)
    # A connect failure like any other: reconnects with backoff, the reason logged once.
    wait_until(lambda: processor.metric("prism_processor_tls_handshake_failures_total") >= 3,
               message="the gateway to retry the handshake")
    assert gateway.log().count("certificate verify failed") == 1
    log_line(processor, "TLS handshake failed", "peer")


@pytest.mark.parametrize("server_name", [None, "images.example.com"], ids=["address", "configured-name"])
def test_hostname_mismatch_answers_503_quickly_and_logs_the_reason(services, pki, server_name):
    processor = services.processor("--tls-cert", pki.named_server_cert, "--tls-key", pki.named_server_key)
    flags = ["--processor-tls-server-name", server_name] if server_name else []
    gateway = services.gateway([processor], "--processor-tls-ca", pki.ca_cert, *FAR_DEADLINE, *flags)
    line = log_line(gateway, "processor connection ended", "hostname mismatch")
    assert (server_name or "127.0.0.1") in line and "--processor-tls-server-name" in line
    assert_unavailable_quickly(gateway)


def test_a_processor_with_a_certificate_from_another_ca_is_not_trusted(services, pki):
    impostor = services.processor("--tls-cert", pki.other_server_cert, "--tls-key", pki.other_server_key)
    gateway = services.gateway([impostor], "--processor-tls-ca", pki.ca_cert, *FAR_DEADLINE)
    log_line(gateway, "processor connection ended", "unknown CA")
    assert_unavailable_quickly(gateway)


# ---- (4) the C client ---------------------------------------------------------------------------

def test_the_c_client_over_tls(services, pki, c_client, tmp_path):
    processor = services.processor(*tls_flags(pki, client_ca=True))
    ok = run_c(c_client, processor, tmp_path, "--tls", "--ca", pki.ca_cert, "--cert", pki.client_cert, "--key", pki.client_key)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("200x200 WEBP ")
    assert (tmp_path / "c-out.webp").read_bytes()[8:12] == b"WEBP"

    by_name = run_c(c_client, processor, tmp_path, "--tls", "--ca", pki.ca_cert, "--cert", pki.client_cert,
                    "--key", pki.client_key, "--server-name", "localhost")
    assert by_name.returncode == 0, by_name.stderr

    wrong_name = run_c(c_client, processor, tmp_path, "--tls", "--ca", pki.ca_cert, "--server-name", "images.example.com")
    assert wrong_name.returncode == 4 and "hostname mismatch" in wrong_name.stderr

    wrong_ca = run_c(c_client, processor, tmp_path, "--tls", "--ca", pki.other_ca_cert)
    assert wrong_ca.returncode == 4 and "certificate verify failed" in wrong_ca.stderr

    no_cert = run_c(c_client, processor, tmp_path, "--tls", "--ca", pki.ca_cert)
    assert no_cert.returncode == 4 and "requires a client certificate" in no_cert.stderr

    other_cert = run_c(c_client, processor, tmp_path, "--tls", "--ca", pki.ca_cert, "--cert", pki.other_client_cert,
                       "--key", pki.other_client_key)
    assert other_cert.returncode == 4 and "unknown CA" in other_cert.stderr


# A handshake timeout two minutes away: a peer that is not told at once would wait for it.
SLOW_HANDSHAKE = ["--handshake-timeout", "120s"]


def test_the_c_client_in_plain_tcp_against_a_tls_port_is_told_to_use_tls(services, pki, c_client, tmp_path):
    processor = services.processor(*tls_flags(pki), *SLOW_HANDSHAKE)
    start = time.monotonic()
    plain = run_c(c_client, processor, tmp_path)
    elapsed = time.monotonic() - start
    assert plain.returncode == 3, plain.stderr
    assert "requires TLS" in plain.stderr
    assert elapsed < 60, "told at once, not cut at the handshake timeout"
    log_line(processor, "plain TCP on the TLS port")


def test_the_c_client_with_tls_against_a_plain_port_fails_clearly(services, pki, c_client, tmp_path):
    processor = services.processor(*SLOW_HANDSHAKE)
    start = time.monotonic()
    result = run_c(c_client, processor, tmp_path, "--tls", "--ca", pki.ca_cert)
    elapsed = time.monotonic() - start
    assert result.returncode == 4
    assert "did not answer with TLS" in result.stderr
    assert elapsed < 60, "failed at once, not cut at the handshake timeout"


# ---- (5) plain meets TLS ------------------------------------------------------------------------

def test_a_plain_client_on_a_tls_port_gets_one_clear_error_frame(services, pki):
    processor = services.processor(*tls_flags(pki), *SLOW_HANDSHAKE)
    start = time.monotonic()
    with socket.create_connection((processor.host, processor.port), timeout=150) as sock:
        sock.sendall(hello())
        answer = read_frame(sock, 150)
        assert answer.kind == "error" and answer.call_id == 0, answer
        assert "requires TLS" in answer.message
        assert read_frame(sock, 150) is None  # then closed
    elapsed = time.monotonic() - start
    print(f"plain client refused in {elapsed:.3f} s: {answer}")
    assert elapsed < 60, "refused at once, not at the handshake timeout"


def test_a_plain_gateway_and_a_tls_processor_part_quickly_and_clearly(services, pki):
    processor = services.processor(*tls_flags(pki))
    gateway = services.gateway([processor], *FAR_DEADLINE)
    log_line(gateway, "processor connection ended", "requires TLS")
    assert_unavailable_quickly(gateway)


def test_a_tls_gateway_and_a_plain_processor_part_quickly_and_clearly(services, pki):
    processor = services.processor()
    gateway = services.gateway([processor], "--processor-tls-ca", pki.ca_cert, *FAR_DEADLINE)
    log_line(gateway, "processor connection ended", "did not answer with TLS")
    assert_unavailable_quickly(gateway)


def test_a_tls_client_on_a_plain_port_fails_fast(services, pki):
    processor = services.processor(*SLOW_HANDSHAKE)
    start = time.monotonic()
    kind, detail = tls_hello(processor, pki.ca_cert)
    elapsed = time.monotonic() - start
    print(f"TLS client on a plain port: {kind} {detail} in {elapsed:.3f} s")
    assert kind == "tls"
    assert elapsed < 60, "failed at once, not at the handshake timeout"


# ---- (6) the handshake timeout bounds TLS -------------------------------------------------------

@pytest.mark.parametrize("first_bytes", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
                         ids=["silent", "half-a-client-hello"])
def test_a_stalled_tls_handshake_is_closed_within_the_handshake_timeout(services, pki, first_bytes):
    processor = services.processor(*tls_flags(pki), "--handshake-timeout", "1s")
    with socket.create_connection((processor.host, processor.port), timeout=120) as sock:
        start = time.monotonic()
        sock.sendall(first_bytes)
        try:
            rest = sock.recv(65536)
            while rest:
                rest = sock.recv(65536)
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - start
    print(f"stalled handshake ({len(first_bytes)} bytes sent) closed after {elapsed:.2f} s")
    # Closed by the 1 s handshake timeout: not before it (a stall only makes this longer), and
    # not left open to this socket's two-minute limit.
    assert 0.8 <= elapsed < 60
    # The port still serves.
    kind, answer = tls_hello(processor, pki.ca_cert)
    assert kind == "hello", answer


def tls_socket(processor, ca):
    context = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection((processor.host, processor.port), timeout=60)
    return context.wrap_socket(raw, server_hostname="localhost")


def test_the_pre_hello_frame_limit_and_the_connection_cap_apply_inside_tls(services, pki):
    processor = services.processor(*tls_flags(pki), "--max-connections", "1")
    with tls_socket(processor, pki.ca_cert) as first:
        # 1 MiB announced before any Hello: refused from the length prefix alone.
        first.sendall(struct.pack(">I", 1 << 20) + b"\0" * 1024)
        answer = read_frame(first)
        print("oversized first frame over TLS:", answer)
        assert answer.kind == "error" and answer.message and answer.code == 8 and answer.reason == 12
    wait_until(lambda: processor.metric("prism_processor_connections") == 0, message="the connection to end")

    with tls_socket(processor, pki.ca_cert) as first:
        first.sendall(hello())
        assert read_frame(first).kind == "hello"
        with tls_socket(processor, pki.ca_cert) as second:
            second.sendall(hello())
            answer = read_frame(second)
            print("second connection over the cap:", answer)
            assert answer.kind == "error" and answer.code == 8  # RESOURCE_EXHAUSTED


# ---- configuration checks -----------------------------------------------------------------------

def check_config(binary, *flags, env=None):
    result = subprocess.run([str(BIN / binary), "--check-config", *map(str, flags)], capture_output=True, text=True,
                            timeout=30, env=env)
    print(f"{binary} --check-config {' '.join(map(str, flags))} -> {result.returncode}\n{result.stdout}{result.stderr}")
    return result


def test_check_config_says_what_is_wrong_with_the_tls_files(pki, tmp_path):
    missing = check_config("prism-processor", "--tls-cert", tmp_path / "nope.pem", "--tls-key", pki.server_key)
    assert missing.returncode != 0 and "--tls-cert (PRISM_TLS_CERT)" in missing.stderr and "does not exist" in missing.stderr

    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"\x30\x82\x01\x0a not pem")
    not_pem = check_config("prism-processor", "--tls-cert", garbage, "--tls-key", pki.server_key)
    assert not_pem.returncode != 0 and "is not PEM" in not_pem.stderr

    unreadable = check_config("prism-processor", "--tls-cert", tmp_path, "--tls-key", pki.server_key)
    assert unreadable.returncode != 0 and "is a directory" in unreadable.stderr

    wrong_key = check_config("prism-processor", "--tls-cert", pki.server_cert, "--tls-key", pki.client_key)
    assert wrong_key.returncode != 0 and "does not belong to the certificate" in wrong_key.stderr

    key_as_cert = check_config("prism-processor", "--tls-cert", pki.server_key, "--tls-key", pki.server_key)
    assert key_as_cert.returncode != 0 and "CERTIFICATE" in key_as_cert.stderr

    half = check_config("prism-processor", "--tls-cert", pki.server_cert)
    assert half.returncode != 0 and "TLS needs both" in half.stderr

    ca_alone = check_config("prism-processor", "--tls-client-ca", pki.ca_cert)
    assert ca_alone.returncode != 0 and "needs TLS" in ca_alone.stderr

    gateway_half = check_config("prism-gateway", "--processors", "127.0.0.1:7070", "--processor-tls-cert", pki.client_cert)
    assert gateway_half.returncode != 0 and "--processor-tls-key" in gateway_half.stderr


def test_check_config_reads_tls_from_the_environment_and_hides_nothing_secret(pki):
    import os
    env = dict(os.environ, PRISM_TLS_CERT=str(pki.server_cert), PRISM_TLS_KEY=str(pki.server_key),
               PRISM_TLS_CLIENT_CA=str(pki.ca_cert))
    ok = check_config("prism-processor", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "tls = on, certificate expires" in ok.stdout and "client certificates required" in ok.stdout
    assert "BEGIN" not in ok.stdout

    env = dict(os.environ, PRISM_PROCESSORS="127.0.0.1:7070", PRISM_PROCESSOR_TLS_CA=str(pki.ca_cert),
               PRISM_PROCESSOR_TLS_CERT=str(pki.client_cert), PRISM_PROCESSOR_TLS_KEY=str(pki.client_key))
    gateway = check_config("prism-gateway", env=env)
    assert gateway.returncode == 0, gateway.stderr
    assert "processor_tls = on, trusting 1 CA" in gateway.stdout and "client certificate expires" in gateway.stdout

    plain = check_config("prism-gateway", "--processors", "127.0.0.1:7070", "--processor-token", "t")
    assert "processor_tls = off" in plain.stdout and "sent in clear without TLS" in plain.stdout
