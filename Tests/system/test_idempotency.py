"""Idempotency-Key on POST /v1/images with real retries against the real binaries, on the local
store and on S3 (SeaweedFS): a client killed mid-upload retries and gets one image; a duplicate
while the first runs gets 409; the key with another image gets 422."""
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import BIN, photo, wait_until

RECIPES = str(Path(__file__).parent / "recipes_for_tests.json")
# Uploads are held in flight by stopping the processor, not by slow work: a photo made quickly
# keeps the tests short.
SOURCE = photo("Garden.jpg")


class Stack:
    """A processor and a gateway on one storage, and a look into that storage."""

    def __init__(self, services, storage, seaweed=None, extra=()):
        self.storage = storage
        self.seaweed = seaweed
        self.bucket = f"idem-{uuid.uuid4().hex[:8]}"
        # Pings far apart: a test may stop the processor for a moment without it being dropped.
        flags = ["--recipes", RECIPES, "--processor-ping-interval", "300s", "--processor-ping-timeout", "300s", *extra]
        env = None
        if storage == "s3":
            flags += ["--storage", "s3", "--s3-endpoint", seaweed.endpoint, "--s3-bucket", self.bucket,
                      "--s3-create-bucket"]
            env = seaweed.gateway_env()
        self.processor = services.processor()
        self.gateway = services.gateway([self.processor], *flags, env=env)
        self.gateway.wait_processors(1)

    def keys(self):
        if self.storage == "s3":
            return self.seaweed.keys(self.bucket)
        return self.gateway.stored_files()

    def manifests(self):
        return sorted(k for k in self.keys() if k.startswith("images/") and k.endswith("/manifest.json"))

    def image_ids(self):
        return sorted({k.split("/")[1] for k in self.keys() if k.startswith("images/")})

    def records(self):
        return [k for k in self.keys() if k.startswith("idempotency/") and not k.split("/")[-1].startswith(".")]

    def post(self, path, key, recipe=None, headers=None, timeout=90):
        headers = dict(headers or {})
        if key is not None:
            headers["Idempotency-Key"] = key
        params = {"recipe": recipe} if recipe else None
        with open(path, "rb") as f:
            return requests.post(self.gateway.url + "/v1/images", params=params, headers=headers,
                                 files={"file": (Path(path).name, f)}, timeout=timeout)

    def post_until_answered(self, path, key, recipe=None, headers=None, deadline=90):
        """Retries as a client should: on 409, after Retry-After."""
        end = time.monotonic() + deadline
        while True:
            r = self.post(path, key, recipe, headers)
            if r.status_code != 409 or time.monotonic() > end:
                return r
            assert r.headers["Content-Type"] == "application/problem+json"
            time.sleep(float(r.headers["Retry-After"]) / 4)


@pytest.fixture(params=["local", "s3"])
def stack(request, services):
    seaweed = request.getfixturevalue("seaweed") if request.param == "s3" else None
    return Stack(services, request.param, seaweed)


def curl_upload(stack, key, recipe):
    """A client in its own process, to be killed mid-flight."""
    return subprocess.Popen(
        ["curl", "-sS", "-o", "/dev/null", "-H", f"Idempotency-Key: {key}",
         "-F", f"file=@{SOURCE}", f"{stack.gateway.url}/v1/images?recipe={recipe}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_client_killed_mid_upload_retries_and_gets_one_image(stack):
    key = str(uuid.uuid4())
    # The processor is stopped until the client is killed: the upload is surely mid-flight then.
    stack.processor.signal(signal.SIGSTOP)
    try:
        client = curl_upload(stack, key, "slow")
        # The body has arrived and processing runs once the key's marker exists.
        wait_until(lambda: stack.records(), 60, 0.01, "the idempotency marker")
        client.kill()
        client.wait(10)
    finally:
        stack.processor.signal(signal.SIGCONT)

    first = stack.post_until_answered(SOURCE, key, "slow")
    assert first.status_code == 201, first.text
    image_id = first.json()["id"]
    again = stack.post(SOURCE, key, "slow")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.headers["Location"] == f"/v1/images/{image_id}"
    # One image: the killed upload was cancelled and removed (or had committed and is the one
    # replayed), never a second.
    wait_until(lambda: stack.image_ids() == [image_id], 60, 0.1, f"only {image_id} in the store: {stack.keys()}")
    assert stack.manifests() == [f"images/{image_id}/manifest.json"]
    assert len(stack.records()) == 1


def test_a_duplicate_while_the_first_runs_gets_409_then_the_same_image(stack):
    key = str(uuid.uuid4())
    result = {}
    first = threading.Thread(target=lambda: result.update(r=stack.post(SOURCE, key, "slow")))
    # The processor is stopped until the duplicate is answered: the first upload is surely
    # still running then, however slowly this machine goes.
    stack.processor.signal(signal.SIGSTOP)
    try:
        first.start()
        wait_until(lambda: stack.records(), 60, 0.01, "the idempotency marker")
        duplicate = stack.post(SOURCE, key, "slow")
    finally:
        stack.processor.signal(signal.SIGCONT)
    first.join(120)
    assert duplicate.status_code == 409, duplicate.text
    problem = duplicate.json()
    assert problem["type"].endswith("/idempotency-key-in-use") and int(duplicate.headers["Retry-After"]) > 0
    assert result["r"].status_code == 201
    replay = stack.post(SOURCE, key, "slow")
    assert replay.status_code == 201 and replay.json()["id"] == result["r"].json()["id"]
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in result["r"].headers
    assert len(stack.manifests()) == 1


def test_the_same_key_with_another_image_or_recipe_gets_422(stack):
    key = str(uuid.uuid4())
    first = stack.post(photo("Garden.jpg"), key)
    assert first.status_code == 201
    for path, recipe in ((photo("Wood.jpg"), None), (photo("Garden.jpg"), "pair")):
        r = stack.post(path, key, recipe)
        assert r.status_code == 422, r.text
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.json()["type"].endswith("/idempotency-key-reused")
    # Without a key, or with another one, uploads are new images as always.
    assert stack.post(photo("Garden.jpg"), None).json()["id"] != first.json()["id"]
    assert stack.post(photo("Garden.jpg"), str(uuid.uuid4())).json()["id"] != first.json()["id"]
    assert len(stack.manifests()) == 3


def test_invalid_keys_get_400(services):
    stack = Stack(services, "local")
    for key in ("x" * 256, "has space", "caf\u00e9".encode().decode("latin-1"), '""'):
        r = stack.post(photo("Garden.jpg"), key)
        assert r.status_code == 400, key
        assert r.json()["type"].endswith("/invalid-idempotency-key")
    assert stack.post(photo("Garden.jpg"), "x" * 255).status_code == 201
    # The draft's structured-field form: the same key quoted.
    replay = stack.post(photo("Garden.jpg"), '"' + "x" * 255 + '"')
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert stack.manifests() and len(stack.manifests()) == 1


def test_keys_are_scoped_per_api_key(services):
    stack = Stack(services, "local", extra=["--api-keys", "tenant-a,tenant-b"])
    key = "order-1"
    a = stack.post(photo("Garden.jpg"), key, headers={"Authorization": "Bearer tenant-a"})
    b = stack.post(photo("Garden.jpg"), key, headers={"Authorization": "Bearer tenant-b"})
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]
    again = stack.post(photo("Garden.jpg"), key, headers={"Authorization": "Bearer tenant-b"})
    assert again.json()["id"] == b.json()["id"] and again.headers["Idempotent-Replayed"] == "true"
    # Another tenant's key with another image is not a conflict either.
    c = stack.post(photo("Wood.jpg"), "order-2", headers={"Authorization": "Bearer tenant-a"})
    d = stack.post(photo("Garden.jpg"), "order-2", headers={"Authorization": "Bearer tenant-b"})
    assert c.status_code == d.status_code == 201


def test_the_sweeper_removes_expired_records(services):
    stack = Stack(services, "local")
    key = str(uuid.uuid4())
    assert stack.post(photo("Garden.jpg"), key).status_code == 201
    records = stack.records()
    assert len(records) == 1
    # A running marker a crashed gateway left, long expired, and the done record made above.
    stale = stack.gateway.data_dir / "idempotency" / ("0" * 64 + ".json")
    stale.write_text('{"created":1,"expires":2,"fingerprint":"f","recipe":"default","state":"running"}')
    result = subprocess.run([str(BIN / "prism-gateway"), "sweep", "--data-dir", str(stack.gateway.data_dir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "expired_idempotency_keys=1" in result.stdout
    assert not stale.exists() and stack.records() == records
