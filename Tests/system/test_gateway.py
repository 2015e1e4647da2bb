"""prism-gateway end to end: real HTTP clients, real processor processes, local disk and S3."""
import hashlib
import io
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import pyvips
import requests

from conftest import REPO, edge, metric_value, photo, wait_until

RECIPES = str(Path(__file__).parent / "recipes_for_tests.json")
DEFAULT_NAMES = {"thumb", "small", "medium", "large", "blur"}
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "avif": "avif", "gif": "gif"}


def check_object(data, entry):
    """The bytes decode, and have the manifest's size and format."""
    image = pyvips.Image.new_from_buffer(data, "")
    image.avg()
    assert (image.width, image.height) == (entry["width"], entry["height"]), entry["name"] if "name" in entry else entry
    loader = image.get("vips-loader")
    fmt = entry["format"]
    assert loader.startswith({"jpeg": "jpeg", "png": "png", "webp": "webp", "avif": "heif", "gif": "gif"}[fmt])
    assert len(data) == entry["bytes"]


def processors_metric(processors, name, labels=None):
    return sum(metric_value(p.metrics(), name, labels) for p in processors)


@pytest.fixture
def stack(services):
    """Two processors and a gateway on the local store, with the test recipes."""
    processors = [services.processor(), services.processor()]
    gateway = services.gateway(processors, "--recipes", RECIPES)
    gateway.wait_processors(2)
    return gateway, processors


def test_upload_makes_every_variant_and_stores_it_on_local_disk(stack):
    gateway, processors = stack
    source = photo("Garden.jpg")
    response = gateway.upload(source)
    assert response.status_code == 201, response.text
    assert response.headers["Content-Type"] == "application/json"
    manifest = response.json()
    assert response.headers["Location"] == f"/v1/images/{manifest['id']}"
    assert manifest["recipe"] == "default"
    assert manifest["id"][14] == "7", "a UUIDv7"
    original = manifest["original"]
    assert (original["width"], original["height"], original["format"]) == (2560, 1600, "jpeg")
    assert original["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert {v["name"] for v in manifest["variants"]} == DEFAULT_NAMES
    sizes = {v["name"]: (v["width"], v["height"]) for v in manifest["variants"]}
    assert sizes == {"thumb": (200, 200), "small": (640, 400), "medium": (1280, 800), "large": (2048, 1280), "blur": (640, 400)}
    for entry in manifest["variants"]:
        assert entry["key"] == f"images/{manifest['id']}/{entry['name']}.{EXTENSIONS[entry['format']]}"
        fetched = requests.get(entry["url"], timeout=60)
        assert fetched.status_code == 200
        assert fetched.headers["Content-Type"] == f"image/{entry['format']}"
        assert "immutable" in fetched.headers["Cache-Control"]
        check_object(fetched.content, entry)
        assert (gateway.data_dir / entry["key"]).read_bytes() == fetched.content
    assert requests.get(original["url"], timeout=60).content == source.read_bytes()

    # The manifest is stored too, and GET returns it.
    got = requests.get(f"{gateway.url}/v1/images/{manifest['id']}", timeout=60)
    assert got.status_code == 200 and got.json() == manifest
    # Both processors took part: the variants were split over them.
    assert all(p.metric("prism_processor_calls_succeeded_total") >= 1 for p in processors)

    # DELETE removes everything.
    deleted = requests.delete(f"{gateway.url}/v1/images/{manifest['id']}", timeout=60)
    assert deleted.status_code == 204
    assert requests.get(f"{gateway.url}/v1/images/{manifest['id']}", timeout=60).status_code == 404
    assert requests.get(manifest["variants"][0]["url"], timeout=60).status_code == 404
    assert gateway.stored_files() == []


# The default recipe as docs/configuration.md promises it: each variant's fit, box and format.
DEFAULT_PROMISE = {
    "thumb": ("cover", 200, 200, "jpeg"),
    "small": ("inside", 640, 0, "webp"),
    "medium": ("inside", 1280, 1280, "jpeg"),
    "large": ("inside", 2048, 2048, "jpeg"),
    "blur": ("inside", 640, 640, "jpeg"),
}


def promised_size(fit, box_width, box_height, width, height):
    """What `fit` into the box makes of a width x height image; "inside" never enlarges, and a
    0 side of the box is free."""
    if fit == "cover":
        return box_width, box_height
    scale = min(box_width / width if box_width else 1e9, box_height / height if box_height else 1e9, 1.0)
    return round(width * scale), round(height * scale)


# ...and the blur variant's gaussian blur.
BLUR_SIGMA = 8


def difference(a, b):
    """Mean absolute difference of the first bands."""
    return (a[0].cast("float") - b[0].cast("float")).abs().avg()


@pytest.mark.parametrize("source,upright", [
    (photo("Dune.jpg"), (1680, 1050)),           # landscape, smaller than the large box
    (edge("orient6-gps.jpg"), (1600, 2560)),     # portrait once turned upright
    (edge("grey.jpg"), (640, 400)),              # smaller than every box: nothing is enlarged
])
def test_the_default_recipe_makes_the_documented_sizes_and_formats_from_real_photos(stack, source, upright):
    gateway, _ = stack
    response = gateway.upload(source)
    assert response.status_code == 201, response.text
    manifest = response.json()
    assert (manifest["original"]["width"], manifest["original"]["height"]) == upright
    made = {}
    for entry in manifest["variants"]:
        data = requests.get(entry["url"], timeout=60).content
        image = pyvips.Image.new_from_buffer(data, "")
        made[entry["name"]] = image
        fit, box_width, box_height, fmt = DEFAULT_PROMISE[entry["name"]]
        want = promised_size(fit, box_width, box_height, *upright)
        assert (image.width, image.height) == want, f"{entry['name']} of {source.name}: {image.width}x{image.height}, promised {want}"
        assert image.get("vips-loader").startswith({"jpeg": "jpeg", "webp": "webp"}[fmt]), (entry["name"], image.get("vips-loader"))
        assert entry["format"] == fmt and (entry["width"], entry["height"]) == want
    assert set(made) == set(DEFAULT_PROMISE)
    # The blur variant looks like the photo at its size blurred, not like the photo itself.
    blur = made["blur"]
    sharp = pyvips.Image.thumbnail(str(source), blur.width, height=blur.height, size="force").copy_memory()
    blurred = sharp.gaussblur(BLUR_SIGMA)
    assert difference(blur, blurred) * 3 < difference(blur, sharp), (difference(blur, blurred), difference(blur, sharp))


def test_raw_body_upload_with_curl_and_recipes_listing(stack):
    gateway, _ = stack
    result = subprocess.run(["curl", "-s", "-w", "\\n%{http_code}", "-H", "Content-Type: image/webp",
                             "--data-binary", f"@{edge('photo.webp')}", f"{gateway.url}/v1/images?recipe=default"],
                            capture_output=True, text=True, timeout=60)
    body, _, status = result.stdout.rpartition("\n")
    assert status == "201", body
    import json
    manifest = json.loads(body)
    assert manifest["original"]["format"] == "webp"
    assert manifest["original"]["key"].endswith("/original.webp")
    recipes = requests.get(f"{gateway.url}/v1/recipes", timeout=60).json()["recipes"]
    by_name = {r["name"]: r for r in recipes}
    assert {"default", "slow", "doomed", "pair"} <= set(by_name)
    thumb = by_name["default"]["variants"][0]
    assert thumb["name"] == "thumb" and thumb["output"]["format"] == "JPEG"


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_a_failing_variant_cancels_the_slow_one_and_leaves_nothing(services, seaweed, storage):
    processors = [services.processor(), services.processor()]
    # The upload deadline is two minutes away: only failing fast answers the doomed upload sooner.
    flags = ["--recipes", RECIPES, "--upload-timeout", "120s"]
    env = None
    bucket = f"doomed-{storage}"
    if storage == "s3":
        flags += ["--storage", "s3", "--s3-endpoint", seaweed.endpoint, "--s3-bucket", bucket, "--s3-create-bucket"]
        env = seaweed.gateway_env()
    gateway = services.gateway(processors, *flags, env=env)
    gateway.wait_processors(2)
    source = edge("large-19mp.jpg")

    # An earlier upload, which must survive the failed one.
    kept = gateway.upload(photo("Dune.jpg"))
    assert kept.status_code == 201, kept.text
    kept_id = kept.json()["id"]
    made = processors_metric(processors, "prism_processor_calls_succeeded_total")

    start = time.monotonic()
    doomed = gateway.upload(source, recipe="doomed", timeout=150)
    failed_after = time.monotonic() - start
    print(f"the doomed upload failed after {failed_after:.2f}s")
    assert doomed.status_code == 422, doomed.text
    problem = doomed.json()
    assert doomed.headers["Content-Type"] == "application/problem+json"
    assert problem["status"] == 422 and problem["variant"] == "bad"
    assert "outside" in problem["detail"]
    # Answered by the failure, not at the 120 s deadline.
    assert failed_after < 60, f"the error took {failed_after:.2f}s"

    # The processor working on the slow variant was told to stop, and did: its call was
    # cancelled and its job ended as cancelled, never completed. Had the gateway waited for the
    # slow variant, or left it running, that job would have ended "ok" and its call succeeded.
    wait_until(lambda: processors_metric(processors, "prism_processor_jobs_running") == 0, message="jobs to stop")
    wait_until(lambda: processors_metric(processors, "prism_processor_calls_cancelled_total") == 1, message="the cancel to be counted")
    assert processors_metric(processors, "prism_processor_job_seconds_count", 'outcome="cancelled"') == 1
    assert processors_metric(processors, "prism_processor_calls_succeeded_total") == made

    # Nothing of the failed upload is stored: only the earlier successful upload remains.
    if storage == "local":
        remaining = gateway.stored_files()
    else:
        remaining = seaweed.keys(bucket)
    assert remaining and all(key.startswith(f"images/{kept_id}/") for key in remaining), remaining


def test_s3_store_objects_are_listed_fetched_and_deleted_through_the_s3_api(services, seaweed):
    processors = [services.processor(), services.processor()]
    gateway = services.gateway(processors, "--storage", "s3", "--s3-endpoint", seaweed.endpoint,
                               "--s3-bucket", "prism-e2e", "--s3-prefix", "tenant1/", "--s3-create-bucket",
                               "--public-base-url", "https://cdn.example.com", env=seaweed.gateway_env())
    gateway.wait_processors(2)
    response = gateway.upload(photo("Wood.jpg"))
    assert response.status_code == 201, response.text
    manifest = response.json()
    image_id = manifest["id"]
    s3 = seaweed.client()
    keys = seaweed.keys("prism-e2e", f"tenant1/images/{image_id}/")
    expected = {f"tenant1/{v['key']}" for v in manifest["variants"]} | {f"tenant1/{manifest['original']['key']}",
                                                                         f"tenant1/images/{image_id}/manifest.json"}
    assert set(keys) == expected
    for entry in manifest["variants"]:
        assert entry["url"] == f"https://cdn.example.com/tenant1/{entry['key']}"
        obj = s3.get_object(Bucket="prism-e2e", Key=f"tenant1/{entry['key']}")
        assert obj["ContentType"] == f"image/{entry['format']}"
        assert obj["CacheControl"] == "public, max-age=31536000, immutable"
        assert obj["ETag"] == entry["etag"]
        check_object(obj["Body"].read(), entry)
    original = s3.get_object(Bucket="prism-e2e", Key=f"tenant1/{manifest['original']['key']}")
    assert original["ContentType"] == "image/jpeg"
    assert original["Body"].read() == photo("Wood.jpg").read_bytes()

    assert requests.get(f"{gateway.url}/v1/images/{image_id}", timeout=60).json() == manifest
    assert requests.delete(f"{gateway.url}/v1/images/{image_id}", timeout=60).status_code == 204
    assert seaweed.keys("prism-e2e", f"tenant1/images/{image_id}/") == []
    assert requests.get(f"{gateway.url}/v1/images/{image_id}", timeout=60).status_code == 404


def test_a_processor_killed_mid_upload_has_its_call_retried(services):
    processors = [services.processor("--workers", "1"), services.processor("--workers", "1")]
    gateway = services.gateway(processors, "--recipes", RECIPES)
    gateway.wait_processors(2)
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=gateway.upload(edge("large-19mp.jpg"), recipe="pair")))
    thread.start()
    wait_until(lambda: all(p.metric("prism_processor_jobs_running") == 1 for p in processors), message="both processors busy")
    victim = processors[0]
    victim.signal(signal.SIGKILL)
    thread.join(120)
    response = result["r"]
    assert response.status_code == 201, response.text
    assert {v["name"] for v in response.json()["variants"]} == {"a", "b"}
    assert metric_value(gateway.metrics(), "prism_gateway_call_retries_total") == 1
    assert processors[1].metric("prism_processor_calls_succeeded_total") == 2


def test_with_every_processor_down_uploads_get_503_with_retry_after_quickly(services):
    processors = [services.processor(), services.processor()]
    # The upload deadline is two minutes away: an upload that waited for a processor to come
    # back would be answered only then.
    gateway = services.gateway(processors, "--upload-timeout", "120s")
    gateway.wait_processors(2)
    for p in processors:
        p.signal(signal.SIGKILL)
        p.proc.wait(10)
    wait_until(lambda: requests.get(gateway.url + "/readyz", timeout=60).status_code == 503, message="readyz to say not ready")
    start = time.monotonic()
    response = gateway.upload(photo("Dune.jpg"), timeout=150)
    elapsed = time.monotonic() - start
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/no-processors"), response.text
    assert elapsed < 60, f"took {elapsed:.1f}s: waited for a processor, not answered at once"
    assert gateway.stored_files() == []


@pytest.fixture
def keyed_stack(services):
    processors = [services.processor()]
    gateway = services.gateway(processors, "--max-upload-size", "1m", env={"PRISM_API_KEYS": "k1,k2"})
    gateway.wait_processors(1)
    return gateway


AUTH = {"Authorization": "Bearer k2"}


@pytest.mark.parametrize("name,status,kind", [
    ("not-an-image.txt", 415, "unsupported-media-type"),
    ("drawing.svg", 415, "unsupported-media-type"),
    ("bomb-30000.png", 422, "too-many-pixels"),
    ("truncated.jpg", 422, "corrupt-image"),
])
def test_bad_images_get_clear_problems(keyed_stack, name, status, kind):
    response = keyed_stack.upload(edge(name), headers=AUTH)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["type"].endswith("/" + kind)
    assert problem["status"] == status and problem["detail"]
    assert "/" not in problem["detail"].replace("JPEG/", "").replace("and/or", ""), problem["detail"]
    assert keyed_stack.stored_files() == []


def test_body_over_the_limit_is_413(keyed_stack):
    big = io.BytesIO(b"\xff\xd8\xff" + b"\0" * (2 << 20))
    response = requests.post(keyed_stack.url + "/v1/images", files={"file": ("big.jpg", big)}, headers=AUTH, timeout=30)
    assert response.status_code == 413
    assert response.json()["type"].endswith("/too-large")
    # Without Content-Length (chunked), the limit still holds.
    def chunks():
        for _ in range(40):
            yield b"\0" * 65536
    response = requests.post(keyed_stack.url + "/v1/images", data=chunks(), headers={**AUTH, "Content-Type": "image/jpeg"}, timeout=30)
    assert response.status_code == 413


@pytest.mark.parametrize("body,content_type,detail", [
    (b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\n\xff\xd8\xff\xe0 partial", "multipart/form-data; boundary=xyz", "closing boundary"),
    (b"--xyz\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nhello\r\n--xyz--\r\n", "multipart/form-data; boundary=xyz", "'file'"),
    (b"--xyz\r\nbroken header without colon\r\n\r\nx\r\n--xyz--\r\n", "multipart/form-data; boundary=xyz", "malformed"),
    (b"anything", "multipart/form-data", "boundary"),
])
def test_broken_multipart_is_400(keyed_stack, body, content_type, detail):
    response = requests.post(keyed_stack.url + "/v1/images", data=body, headers={**AUTH, "Content-Type": content_type}, timeout=60)
    assert response.status_code == 400, response.text
    assert detail in response.json()["detail"]


def test_api_keys_are_required_when_configured(keyed_stack):
    missing = keyed_stack.upload(photo("Dune.jpg"))
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = keyed_stack.upload(photo("Dune.jpg"), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert requests.get(keyed_stack.url + "/v1/recipes", timeout=60).status_code == 401
    ok = keyed_stack.upload(photo("Dune.jpg"), headers={"Authorization": "Bearer k1"})
    assert ok.status_code == 201, ok.text
    # Operational routes stay open.
    assert requests.get(keyed_stack.url + "/healthz", timeout=60).status_code == 200


def test_unknown_recipe_and_unknown_image_are_clear(stack):
    gateway, _ = stack
    response = gateway.upload(photo("Dune.jpg"), recipe="nope")
    assert response.status_code == 400 and "known recipes" in response.json()["detail"]
    assert requests.get(gateway.url + "/v1/images/not-an-id", timeout=60).status_code == 404
    assert requests.get(gateway.url + "/v1/images/01234567-89ab-7def-8123-456789abcdef", timeout=60).status_code == 404
    assert requests.get(gateway.url + "/nowhere", timeout=60).json()["status"] == 404


def test_past_the_concurrent_upload_limit_the_next_upload_is_429_until_a_slot_frees(services):
    processors = [services.processor()]
    # Pings far apart: the processor is stopped for a while below without being dropped.
    gateway = services.gateway(processors, "--max-concurrent-uploads", "2", "--processor-ping-interval", "300s",
                               "--processor-ping-timeout", "300s")
    gateway.wait_processors(1)
    results = []
    held = [threading.Thread(target=lambda: results.append(gateway.upload(photo("Dune.jpg"))))
            for _ in range(2)]
    # The processor is stopped until the third upload is answered: the first two surely hold
    # their slots until then, however slowly this machine runs.
    processors[0].signal(signal.SIGSTOP)
    try:
        for thread in held:
            thread.start()
        wait_until(lambda: metric_value(gateway.metrics(), "prism_gateway_uploads_in_flight") == 2, message="both slots taken")
        refused = gateway.upload(photo("Dune.jpg"))
    finally:
        processors[0].signal(signal.SIGCONT)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "1"
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/too-many-uploads")
    for thread in held:
        thread.join(120)
    assert [r.status_code for r in results] == [201, 201], [r.text for r in results]
    # The slots are given back.
    assert gateway.upload(photo("Dune.jpg")).status_code == 201


def upload_requests_answered(gateway):
    """POST /v1/images requests the gateway has finished with, whatever their status."""
    total = 0.0
    for line in gateway.metrics().splitlines():
        if line.startswith("prism_gateway_requests_total{") and 'route="/v1/images"' in line and 'method="POST"' in line:
            total += float(line.rpartition(" ")[2])
    return total


def test_a_client_that_disconnects_leaves_no_work_running_and_nothing_stored(services):
    processors = [services.processor(), services.processor()]
    # The upload deadline is two minutes away: only the disconnect can stop the work sooner.
    gateway = services.gateway(processors, "--recipes", RECIPES, "--upload-timeout", "120s")
    gateway.wait_processors(2)
    data = edge("large-19mp.jpg").read_bytes()
    head = (f"POST /v1/images?recipe=slow HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()

    # 1. Gone while sending the body: once the gateway is done with the request, no processor
    # call was made and nothing was stored.
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(head + data[: len(data) // 2])
    wait_until(lambda: upload_requests_answered(gateway) == 1, message="the gateway to finish the cut-off request")
    assert processors_metric(processors, "prism_processor_calls_started_total") == 0
    assert gateway.stored_files() == []

    # 2. Gone while the variants are being made (the job runs and the original is stored): the
    # processors stop, and what was stored is removed.
    s = socket.create_connection(("127.0.0.1", gateway.port))
    s.sendall(head + data)
    wait_until(lambda: processors_metric(processors, "prism_processor_jobs_running") == 1, message="the slow job to start")
    wait_until(lambda: any(f.endswith("/original.jpg") for f in gateway.stored_files()), message="the original to be stored")
    s.close()
    start = time.monotonic()
    wait_until(lambda: processors_metric(processors, "prism_processor_jobs_running") == 0, message="the job to stop")
    stopped_after = time.monotonic() - start
    print(f"the job stopped {stopped_after:.2f}s after the client left")
    assert stopped_after < 60, f"work went on for {stopped_after:.1f}s after the client left, as if to the deadline"
    # Stopped, not finished: the call was cancelled and the running job ended as cancelled.
    wait_until(lambda: processors_metric(processors, "prism_processor_calls_cancelled_total") == 1, message="the cancel to be counted")
    assert processors_metric(processors, "prism_processor_job_seconds_count", 'outcome="cancelled"') == 1
    assert processors_metric(processors, "prism_processor_calls_succeeded_total") == 0
    wait_until(lambda: metric_value(gateway.metrics(), "prism_gateway_uploads_cancelled_total") == 1, message="the gateway to count it")
    wait_until(lambda: gateway.stored_files() == [], message="the store to be clean")


def test_storage_failure_answers_503_and_stops_the_processors(services):
    from conftest import free_port
    processors = [services.processor()]
    dead = f"http://127.0.0.1:{free_port()}"
    # The upload deadline is two minutes away: an answer that waited for the slow variant, or
    # for the deadline, would come much later than the store's failure.
    gateway = services.gateway(processors, "--recipes", RECIPES, "--storage", "s3", "--s3-endpoint", dead,
                               "--s3-bucket", "nowhere", "--upload-timeout", "120s",
                               env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    gateway.wait_processors(1)
    start = time.monotonic()
    response = gateway.upload(edge("large-19mp.jpg"), recipe="slow", timeout=150)
    took = time.monotonic() - start
    print(f"answered {response.status_code} after {took:.2f}s")
    assert response.status_code == 503, response.text
    assert took < 60, f"answered after {took:.1f}s"
    problem = response.json()
    assert problem["type"].endswith("/storage-unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    assert "127.0.0.1" not in response.text and "nowhere" not in response.text
    # The variant being made when the store failed was cancelled, not finished for nothing.
    wait_until(lambda: processors[0].metric("prism_processor_calls_cancelled_total") == 1, message="the call to be cancelled")
    wait_until(lambda: processors[0].metric("prism_processor_jobs_running") == 0, message="the job to stop")
    assert processors[0].metric("prism_processor_calls_succeeded_total") == 0


def test_an_upload_past_its_deadline_is_504_and_leaves_nothing(services):
    processors = [services.processor()]
    gateway = services.gateway(processors, "--recipes", RECIPES, "--upload-timeout", "1s")
    gateway.wait_processors(1)
    start = time.monotonic()
    response = gateway.upload(edge("large-19mp.jpg"), recipe="slow")
    took = time.monotonic() - start
    print(f"answered {response.status_code} after {took:.2f}s (deadline 1s)")
    assert response.status_code == 504, response.text
    assert response.json()["type"].endswith("/deadline-exceeded")
    # The processor stopped at the same deadline (it travelled in the call): the slow variant
    # was never completed. Had the processor not known the deadline, it would have finished
    # the variant for nothing and counted a success.
    wait_until(lambda: processors[0].metric("prism_processor_jobs_running") == 0, message="the job to stop")
    assert processors[0].metric("prism_processor_calls_succeeded_total") == 0
    assert gateway.stored_files() == []


@pytest.mark.parametrize("source", [photo("Dune.jpg"), edge("orient6-gps.jpg"), edge("alpha.png")])
def test_the_manifest_carries_a_thumbhash_and_dominant_colour_that_look_like_the_image(stack, source):
    """The placeholder, decoded by the reference's own decoder, looks like the image; the
    dominant colour is one of the image's most populated colour cells, counted independently."""
    import base64
    from thumbhash import thumbhash_to_image
    gateway, _ = stack
    response = gateway.upload(source)
    assert response.status_code == 201, response.text
    manifest = response.json()
    placeholder = manifest["placeholder"]
    hash_bytes = base64.b64decode(placeholder["thumbhash"], validate=True)
    assert 5 <= len(hash_bytes) <= 25
    # The decoded preview has the upright image's aspect ratio (ThumbHash keeps it roughly).
    preview = thumbhash_to_image(hash_bytes).convert("RGBA")
    width, height = manifest["original"]["width"], manifest["original"]["height"]
    assert abs(preview.width / preview.height - width / height) < 0.25 * (width / height)
    # ...and its mean colour is the image's (over opaque pixels, mean channel difference < 20).
    small = pyvips.Image.thumbnail(str(source), 100, height=100)
    if small.bands == 1:
        small = small.colourspace("srgb")
    if not small.hasalpha():
        small = small.bandjoin(255)
    pixels = bytes(small.cast("uchar").write_to_memory())
    opaque = [pixels[i:i + 4] for i in range(0, len(pixels), 4) if pixels[i + 3] >= 128]
    mean = [sum(p[c] for p in opaque) / len(opaque) for c in range(3)]
    preview_px = [p for p in preview.getdata() if p[3] >= 128]
    preview_mean = [sum(p[c] for p in preview_px) / len(preview_px) for c in range(3)]
    assert sum(abs(a - b) for a, b in zip(mean, preview_mean)) / 3 < 20, (mean, preview_mean)
    # The dominant colour is among the three most populated of 4096 cells of that scaling.
    assert re.fullmatch(r"#[0-9a-f]{6}", placeholder["color"])
    counts = {}
    for p in opaque:
        cell = (p[0] >> 4, p[1] >> 4, p[2] >> 4)
        counts[cell] = counts.get(cell, 0) + 1
    top = sorted(counts, key=lambda c: -counts[c])[:3]
    colour = tuple(int(placeholder["color"][i:i + 2], 16) >> 4 for i in (1, 3, 5))
    assert colour in top, (placeholder["color"], [(c, counts[c]) for c in top])


def test_a_recipe_can_ask_for_a_blurhash_that_decodes_to_the_image(stack):
    """`"blurhash": {"x": 5, "y": 4}` in a recipe: the manifest's placeholder carries a BlurHash
    of that shape that the reference decoder turns into the image's colours; recipes without
    the option carry none; the listing shows the option; bad counts stop the gateway at start."""
    import blurhash
    from conftest import BIN
    gateway, _ = stack
    listed = {r["name"]: r for r in requests.get(gateway.url + "/v1/recipes", timeout=10).json()["recipes"]}
    assert listed["blurred"]["blurhash"] == {"x": 5, "y": 4}
    assert "blurhash" not in listed["default"]

    source = photo("Dune.jpg")
    response = gateway.upload(source, recipe="blurred")
    assert response.status_code == 201, response.text
    placeholder = response.json()["placeholder"]
    hash_ = placeholder["blurhash"]
    assert blurhash.components(hash_) == (5, 4)
    assert len(hash_) == 4 + 2 * 5 * 4
    # Decoded by the reference decoder, its mean colour is the image's (mean channel diff < 12).
    decoded = blurhash.decode(hash_, 20, 16)
    mean = [sum(px[c] for row in decoded for px in row) / (20 * 16) for c in range(3)]
    small = pyvips.Image.thumbnail(str(source), 100, height=100).copy_memory()
    image_mean = [small.extract_band(c).avg() for c in range(3)]
    assert sum(abs(a - b) for a, b in zip(mean, image_mean)) / 3 < 12, (mean, image_mean)
    # The stored manifest says the same; the default recipe's has no BlurHash.
    stored = requests.get(f"{gateway.url}/v1/images/{response.json()['id']}", timeout=10).json()
    assert stored["placeholder"]["blurhash"] == hash_
    plain = gateway.upload(source)
    assert plain.status_code == 201 and "blurhash" not in plain.json()["placeholder"]

    bad = gateway.data_dir.parent / "bad-recipes.json"
    bad.write_text('{"recipes": {"b": {"blurhash": {"x": 12, "y": 3}, "variants": ['
                   '{"name": "t", "operations": [{"resize": {"width": 10}}], "output": {"format": "JPEG"}}]}}}')
    result = subprocess.run([str(BIN / "prism-gateway"), "--check-config", "--processors", "127.0.0.1:1",
                             "--recipes", str(bad)], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "blurhash" in result.stderr and "1-9" in result.stderr, result.stderr
