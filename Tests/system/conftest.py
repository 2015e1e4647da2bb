"""Fixtures that run Prism's real binaries (and SeaweedFS) as processes on free loopback ports.

Every process a fixture starts is stopped by that fixture, by its process id: SIGTERM first
(the services drain), SIGKILL if it does not exit in time.

Waits here are long (a minute): CI machines are shared, and a stall of ten seconds or more can
come at any moment. A wait that polls ends as soon as its condition holds, so a long limit costs
nothing when all is well; what a test asserts about time it measures itself, against the
alternative it rules out.
"""
import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PRISM_BIN_DIR", REPO / ".build" / "debug"))
IMAGES = Path(os.environ.get("PRISM_TEST_IMAGES", REPO / ".test-images"))
C_CLIENT = REPO / ".build-c" / "prism-call"


_ports_given = set()


class FakeDNS:
    """One DNS name the tests control, for a gateway started with `env()`: its getaddrinfo is
    answered from a file (Tests/system/support/fake_resolver.c, preloaded), read on every
    lookup. `publish(ips)` is that name's answer (none: the name does not exist, NXDOMAIN);
    `fail()` makes lookups fail as a DNS timeout does. Every other name resolves as usual.
    nss_wrapper was used before: it is not safe with lookups on several threads at once (a
    gateway crashed with a double free inside it), and it cannot fail a lookup on purpose."""

    _library = None

    def __init__(self, tmp_path, name):
        if FakeDNS._library is None:
            folder = tempfile.mkdtemp(prefix="prism-fake-dns-")
            # Removed when the test session ends (every process that preloads it is stopped by
            # then); one was left behind per session before.
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            built = Path(folder) / "fake_resolver.so"
            subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(built),
                            str(REPO / "Tests" / "system" / "support" / "fake_resolver.c"), "-ldl"], check=True)
            FakeDNS._library = built
        self.name = name
        self.path = Path(tmp_path) / f"dns-{name}"
        self.publish([])

    def _write(self, text):
        # Whole or not at all: the resolver may read the file at any moment.
        partial = self.path.with_suffix(".partial")
        partial.write_text(text)
        os.replace(partial, self.path)

    def publish(self, ips):
        self._write("".join(f"{ip}\n" for ip in ips))

    def fail(self):
        self._write("FAIL\n")

    def env(self):
        return {"LD_PRELOAD": str(FakeDNS._library), "FAKE_DNS_NAME": self.name, "FAKE_DNS_FILE": str(self.path)}


def free_port():
    """A free loopback port, and never one this session has handed out before: the port is
    not bound until its service starts, so two picked back to back (a processor's protocol
    and status ports) could otherwise be the same one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port


def photo(name):
    return IMAGES / "photos" / name


def edge(name):
    return IMAGES / "edge" / name


class Service:
    """One child process with its log captured in a file."""

    def __init__(self, name, args, log_dir, env=None, ready_url=None, ready_timeout=60, cwd=None):
        self.name = name
        self.args = [str(a) for a in args]
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
        self.pid = self.proc.pid
        if ready_url:
            try:
                self.wait_ready(ready_url, ready_timeout)
            except BaseException:
                # No fixture holds this service yet: stop it here rather than leave it running.
                self.stop()
                raise

    def wait_ready(self, url, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready at {url} after {timeout}s:\n{self.log()}")

    def log(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout=30):
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class Processor(Service):
    def __init__(self, log_dir, *flags, env=None, name=None, host="127.0.0.1", port=None):
        self.port = port or free_port()
        self.status_port = free_port()
        self.host = host
        args = [BIN / "prism-processor", "--host", host, "--port", self.port,
                "--status-port", self.status_port, *flags]
        super().__init__(name or f"processor-{self.port}", args, log_dir, env=env,
                         ready_url=f"http://{host}:{self.status_port}/readyz")

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def metrics(self):
        return requests.get(f"http://{self.host}:{self.status_port}/metrics", timeout=60).text

    def metric(self, name, labels=None):
        return metric_value(self.metrics(), name, labels)


def metric_value(text, name, labels=None):
    """Sum of a metric's series in Prometheus text, or the one series with exactly these labels
    (given as 'a="x",b="y"', in any order)."""
    def label_set(body):
        return frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', body))

    wanted = label_set(labels) if labels is not None else None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        metric, _, rest = series.partition("{")
        if metric != name:
            continue
        if wanted is not None:
            if label_set(rest.rstrip("}")) == wanted:
                return float(value)
        else:
            total += float(value)
    return total


def wait_until(condition, timeout=60, interval=0.02, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")


class Gateway(Service):
    def __init__(self, log_dir, processors=(), *flags, env=None, dns=None, storage_dir=None, cwd=None):
        self.port = free_port()
        self.data_dir = Path(storage_dir or Path(log_dir) / "data")
        args = [BIN / "prism-gateway", "--port", self.port, "--data-dir", self.data_dir, *flags]
        if processors:
            args += ["--processors", ",".join(p.address if hasattr(p, "address") else p for p in processors)]
        if dns:
            args += ["--processor-dns", dns]
        super().__init__(f"gateway-{self.port}", args, log_dir, env=env, ready_url=f"http://127.0.0.1:{self.port}/healthz", cwd=cwd)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def wait_processors(self, count, timeout=60):
        def ready():
            r = requests.get(self.url + "/readyz", timeout=60)
            return r.status_code == 200 and f"ready: {count} " in r.text
        wait_until(ready, timeout, message=f"{count} processors ready")

    def upload(self, path, recipe=None, headers=None, timeout=60):
        params = {"recipe": recipe} if recipe else None
        with open(path, "rb") as f:
            return requests.post(self.url + "/v1/images", params=params, files={"file": (Path(path).name, f)},
                                 headers=headers, timeout=timeout)

    def metrics(self):
        return requests.get(self.url + "/metrics", timeout=60).text

    def stored_files(self):
        """Every object in the local store (the gateway's data directory)."""
        if not self.data_dir.exists():
            return []
        return sorted(str(p.relative_to(self.data_dir)) for p in self.data_dir.rglob("*") if p.is_file())


class Seaweed(Service):
    """A real S3 server: SeaweedFS with SigV4 credentials required."""
    ACCESS_KEY = "prism-test"
    SECRET_KEY = "prism-test-secret"

    def __init__(self, log_dir, ports=None):
        ports = ports or [free_port() for _ in range(8)]
        while len(set(ports)) < 8:
            ports = [free_port() for _ in range(8)]
        self.ports = ports
        self.log_dir = Path(log_dir)
        self.s3_port = ports[6]
        data = Path(log_dir) / "weed-data"
        data.mkdir(parents=True, exist_ok=True)
        config = Path(log_dir) / "s3.json"
        config.write_text('{"identities":[{"name":"prism","credentials":[{"accessKey":"%s","secretKey":"%s"}],'
                          '"actions":["Admin","Read","Write","List","Tagging"]}]}' % (self.ACCESS_KEY, self.SECRET_KEY))
        args = ["weed", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
                f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
                f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
                f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
                "-s3", f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}", f"-s3.config={config}",
                # Off: their fixed default ports would clash between two SeaweedFS instances.
                "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-volume.max=0", "-master.volumeSizeLimitMB=64",
                # A restart on old data waits out the election timeout before the master leads:
                # 18 s at the default 10 s, 3 s with this (one master, nobody else to elect).
                "-master.electionTimeout=1s"]
        super().__init__("seaweedfs", args, log_dir)
        try:
            wait_until(self._answers, 120, 0.1, "SeaweedFS S3 to answer")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout=3):
        """SIGTERM, then SIGKILL after `timeout` seconds: SeaweedFS's own graceful stop takes
        25 s (a 15 s gRPC drain, then 10 s for the master to notice the volume leave), and a
        test's objects are thrown away with its directory anyway."""
        return super().stop(timeout)

    @classmethod
    def restart(cls, old):
        """A new server on the same data directory and ports (after `old` was killed)."""
        return cls(old.log_dir, ports=old.ports)

    def _answers(self):
        if not self.alive():
            raise RuntimeError("weed exited:\n" + self.log()[-3000:])
        try:
            return requests.get(self.endpoint, timeout=1).status_code in (200, 403)
        except requests.RequestException:
            return False

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.s3_port}"

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.ACCESS_KEY,
                            aws_secret_access_key=self.SECRET_KEY, region_name="us-east-1")

    def gateway_env(self):
        return {"AWS_ACCESS_KEY_ID": self.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY}

    def keys(self, bucket, prefix=""):
        listing = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    server = Seaweed(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop()


@pytest.fixture
def services(tmp_path):
    """Starts services for one test and stops all of them afterwards, newest first."""
    started = []

    class Factory:
        log_dir = tmp_path

        def processor(self, *flags, **kw):
            p = Processor(tmp_path, *flags, **kw)
            started.append(p)
            return p

        def gateway(self, processors=(), *flags, **kw):
            g = Gateway(tmp_path, processors, *flags, **kw)
            started.append(g)
            return g

        def add(self, service):
            started.append(service)
            return service

    yield Factory()
    for service in reversed(started):
        service.stop()


@pytest.fixture(scope="session")
def c_client():
    subprocess.run(["make", "-s", "-C", str(REPO / "Sources" / "prism-call")], check=True)
    return C_CLIENT
