"""Fixtures that run Prism's real binaries (and SeaweedFS) as processes on free loopback ports.

Every process a fixture starts is stopped by that fixture, by its process id: SIGTERM first
(the services drain), SIGKILL if it does not exit in time.
"""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PRISM_BIN_DIR", REPO / ".build" / "debug"))
IMAGES = Path(os.environ.get("PRISM_TEST_IMAGES", REPO / ".test-images"))
C_CLIENT = REPO / ".build-c" / "prism-call"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(name):
    return IMAGES / "photos" / name


def edge(name):
    return IMAGES / "edge" / name


class Service:
    """One child process with its log captured in a file."""

    def __init__(self, name, args, log_dir, env=None, ready_url=None, ready_timeout=30):
        self.name = name
        self.args = [str(a) for a in args]
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        self.pid = self.proc.pid
        if ready_url:
            self.wait_ready(ready_url, ready_timeout)

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
        return requests.get(f"http://{self.host}:{self.status_port}/metrics", timeout=5).text

    def metric(self, name, labels=None):
        return metric_value(self.metrics(), name, labels)


def metric_value(text, name, labels=None):
    """Sum of a metric's series (or the one series with exactly these labels) in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        if labels is not None:
            if series == f"{name}{{{labels}}}":
                return float(value)
        elif series == name or series.startswith(name + "{"):
            total += float(value)
    return total


def wait_until(condition, timeout=20, interval=0.02, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")


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
