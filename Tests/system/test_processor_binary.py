"""The prism-processor binary as operators run it, called by the C client built on protobuf-c."""
import signal
import subprocess
import time

import pyvips
import pytest

from conftest import BIN, edge, photo, wait_until


def call(c_client, processor, source, out, *args, timeout=60):
    return subprocess.run(
        [c_client, "--host", processor.host, "--port", str(processor.port), "--in", source, "--out", out, *args],
        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("fmt,size,fit,expect", [
    ("webp", ("320", "240"), "cover", (320, 240)),
    ("jpeg", ("640", "0"), "inside", (640, 400)),
    ("avif", ("300", "300"), "contain", (300, 300)),
    ("png", ("100", "400"), "fill", (100, 400)),
])
def test_c_client_writes_a_valid_image_of_the_requested_size(services, c_client, tmp_path, fmt, size, fit, expect):
    processor = services.processor()
    out = tmp_path / f"out.{fmt}"
    result = call(c_client, processor, photo("Garden.jpg"), out,
                  "--width", size[0], "--height", size[1], "--fit", fit, "--format", fmt)
    assert result.returncode == 0, result.stderr
    image = pyvips.Image.new_from_file(str(out))
    assert (image.width, image.height) == expect
    image.avg()  # decodes every pixel
    loader = image.get("vips-loader")
    assert loader.startswith({"webp": "webp", "jpeg": "jpeg", "avif": "heif", "png": "png"}[fmt])
    assert result.stdout.split()[0] == f"{expect[0]}x{expect[1]}"


def test_c_client_hears_why_a_call_was_refused(services, c_client, tmp_path):
    processor = services.processor()
    result = call(c_client, processor, edge("not-an-image.txt"), tmp_path / "x.jpg", "--width", "100")
    assert result.returncode == 3
    assert "not an image" in result.stderr
    result = call(c_client, processor, edge("bomb-30000.png"), tmp_path / "x.jpg", "--width", "100")
    assert result.returncode == 3
    assert "30000x30000" in result.stderr
    # The processor is still serving.
    ok = call(c_client, processor, photo("Dune.jpg"), tmp_path / "ok.jpg", "--width", "100")
    assert ok.returncode == 0, ok.stderr


def test_token_is_enforced(services, c_client, tmp_path):
    processor = services.processor(env={"PRISM_AUTH_TOKEN": "tok3n"})
    denied = call(c_client, processor, photo("Dune.jpg"), tmp_path / "x.jpg", "--width", "50", "--token", "nope")
    assert denied.returncode == 3 and "token" in denied.stderr
    allowed = call(c_client, processor, photo("Dune.jpg"), tmp_path / "x.jpg", "--width", "50", "--token", "tok3n")
    assert allowed.returncode == 0, allowed.stderr


def test_request_id_travels_into_the_processor_log(services, c_client, tmp_path):
    processor = services.processor("--log-format", "json")
    assert call(c_client, processor, photo("Dune.jpg"), tmp_path / "x.jpg", "--width", "50").returncode == 0
    wait_until(lambda: '"request_id":"prism-call-c"' in processor.log(), message="request id in the log")


def test_sigterm_lets_the_call_in_flight_finish_then_exits(services, c_client, tmp_path):
    # A two-minute drain deadline: a processor that waited for it, rather than exiting once its
    # last call was done, would still be running long after the call finished.
    processor = services.processor("--workers", "1", "--drain-timeout", "120s")
    slow = subprocess.Popen(
        [c_client, "--port", str(processor.port), "--in", edge("large-19mp.jpg"), "--out", tmp_path / "slow.jpg",
         "--width", "5120", "--blur", "12", "--timeout-ms", "120000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: processor.metric("prism_processor_jobs_running") == 1, message="the slow job to start")
    processor.signal(signal.SIGTERM)
    out, err = slow.communicate(timeout=150)
    # The call finished: cut at a drain deadline, it would have failed.
    assert slow.returncode == 0, err
    assert out.startswith("5120x3840")
    finished = time.monotonic()
    processor.proc.wait(150)
    exited_after = time.monotonic() - finished
    print(f"the processor exited {exited_after:.2f} s after its last call finished")
    assert processor.proc.returncode == 0
    log = processor.log()
    assert "draining" in log and "processor stopped" in log
    assert "drain timeout" not in log
    assert exited_after < 60, "exited once its last call was done, not at the drain deadline"


@pytest.mark.parametrize("args,env,text", [
    (["--workers", "0"], {}, "--workers"),
    (["--max-frame-size", "12q"], {}, "max-frame-size"),
    ([], {"PRISM_PROCESSOR_PORT": "seventy"}, "PRISM_PROCESSOR_PORT=seventy"),
    ([], {"PRISM_DRAIN_TIMEOUT": "soon"}, "PRISM_DRAIN_TIMEOUT"),
])
def test_bad_settings_stop_startup_with_a_clear_message(args, env, text):
    import os
    result = subprocess.run([BIN / "prism-processor", *args], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=30)
    assert result.returncode != 0
    assert text in result.stderr


def test_one_malloc_arena_unless_the_environment_chooses():
    # Set by a constructor before any thread exists (Sources/CMallocArena): with more arenas
    # each kept the space of its last large decode and peak RSS held them all.
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    own = subprocess.run([BIN / "prism-processor", "--check-config"], capture_output=True, text=True, env=env, timeout=30)
    assert own.returncode == 0, own.stderr
    assert "malloc_arenas = 1" in own.stdout + own.stderr
    for chosen in ({"MALLOC_ARENA_MAX": "4"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}):
        theirs = subprocess.run([BIN / "prism-processor", "--check-config"], capture_output=True, text=True,
                                env={**env, **chosen}, timeout=30)
        assert theirs.returncode == 0, theirs.stderr
        assert "malloc_arenas = as the environment or the C library sets them" in theirs.stdout + theirs.stderr
