"""eov-serve started for real on a loopback port, spoken to with the official openai client."""

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai  # the [dev] extra installs the client, and eov-serve's [serve] extra
import pytest
from click.testing import CliRunner

from eov_edge.core.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow
KEY = "test-key"
CALIB = PROJECT_ROOT / "calib_data"
THERMAL = CALIB / "heldout" / "views" / "grounding" / "grounding_06_v0.png"  # an 8-bit thermal frame
LANDSAT = CALIB / "multispectral" / "landsat7_etm_olinda" / "L7_ETMs.tif"  # georeferenced (EPSG:31985), 6 bands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(artifacts: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "eov-serve"), "--artifacts", str(artifacts),
                                "--port", str(port), "--no-verify", "--model-name", "nano", *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONWARNINGS="ignore"))
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, base
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.stdout.read())
            time.sleep(0.1)
    process.kill()
    raise AssertionError("eov-serve did not start")


@pytest.fixture(scope="module")
def server(nano_artifacts):
    process, base = start(nano_artifacts, "--allow-root", str(CALIB), "--api-key", KEY, "--max-batch", "4")
    yield base
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def ask(client, url: str, text: str | None = None, **extra):
    content = [{"type": "image_url", "image_url": {"url": url}}]
    if text is not None:
        content.append({"type": "text", "text": text})
    stream = extra.pop("stream", False)
    return client.chat.completions.create(model="nano", messages=[{"role": "user", "content": content}],
                                          stream=stream, extra_body=extra or None)


def eov_run(artifacts: Path, image: Path, *args: str) -> dict:
    from eov_edge.runtime.cli import main

    result = CliRunner().invoke(main, ["--artifacts", str(artifacts), str(image), "--json", "--no-verify", *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def test_a_detection_is_token_identical_to_eov_run_with_its_shapes(client, nano_artifacts):
    answer = ask(client, data_uri(THERMAL, "image/png"), "detect", band_set="thermal8")
    want = eov_run(nano_artifacts, THERMAL, "--task", "detection", "--band-set", "thermal8")["results"][0]
    assert answer.choices[0].message.content == want["text"]
    extra = answer.model_extra["eov"]
    assert extra["task"] == "detection" and len(extra["detections"]) == len(want["detections"]) > 0
    for got, expected in zip(extra["detections"], want["detections"]):
        # the shapes exactly; the score (the tokens' probability) to float rounding: the service
        # prefills the image block, then the question, where eov-run prefills the prompt at once
        assert got["pixel_points"] == expected["pixel_points"] and got["label"] == expected["label"]
        assert got["score"] == pytest.approx(expected["score"], abs=1e-6)
        assert got["source"] == "image_url[0]"
    assert answer.usage.completion_tokens == len(want["token_ids"])
    assert extra["geojson"] is None  # a PNG has no map


def test_a_streamed_answer_is_the_plain_answer_in_pieces(client):
    url = data_uri(THERMAL, "image/png")
    plain = ask(client, url, "Describe the image.", band_set="thermal8").choices[0].message.content
    chunks = list(ask(client, url, "Describe the image.", band_set="thermal8", stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(pieces) == plain and len([p for p in pieces if p]) > 1
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_georeferenced_tiff_gets_geojson_and_a_path_under_the_root_is_read(client, nano_artifacts):
    answer = ask(client, data_uri(LANDSAT, "image/tiff"), task="grounding", band_set="landsat7_etm8")
    geojson = answer.model_extra["eov"]["geojson"]
    want = eov_run(nano_artifacts, LANDSAT, "--task", "grounding", "--band-set", "landsat7_etm8")["results"][0]
    assert answer.choices[0].message.content == want["text"]
    assert geojson["type"] == "FeatureCollection" and len(geojson["features"]) == len(want["detections"]) > 0
    lon, lat = geojson["features"][0]["geometry"]["coordinates"][0][0]
    assert -36 < lon < -34 and -9 < lat < -7  # Olinda, Brazil, in WGS 84
    by_path = ask(client, str(LANDSAT.relative_to(CALIB)), task="grounding", band_set="landsat7_etm8")
    assert by_path.choices[0].message.content == answer.choices[0].message.content


def test_concurrent_requests_about_one_image_share_its_prefix(client, server):
    import urllib.request

    url = data_uri(THERMAL, "image/png")
    questions = ["How many people are there?", "Is there a car in the image?", "Describe the image.", "detect"]
    alone = [ask(client, url, q, band_set="thermal8").choices[0].message.content for q in questions]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda q: ask(client, url, q, band_set="thermal8").choices[0].message.content,
                                 questions))
    assert together == alone
    request = urllib.request.Request(f"{server}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    metrics = urllib.request.urlopen(request).read().decode()
    hits = float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("eov_prefix_cache_hits_total")))
    assert hits >= 4


@pytest.mark.parametrize("content, extra, status, message", [
    ("TRUNCATED", {}, 400, "image_url\\[0\\]|truncated|corrupt|not a raster"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAA"}},
      {"type": "text", "text": "detect"}], {}, 400, "not valid base64"),
    ("THERMAL", {"band_set": "no_such_sensor"}, 400, "no_such_sensor"),
    ("THERMAL", {"task": "segmentation"}, 400, "unknown task 'segmentation'"),
    ("THERMAL", {"max_tokens": 5000}, 400, "does not fit"),
    ([{"type": "image_url", "image_url": {"url": "../README.md"}}, {"type": "text", "text": "x"}], {}, 400,
     "'..' is not allowed"),
    ([{"type": "image_url", "image_url": {"url": "/etc/hostname"}}, {"type": "text", "text": "x"}], {}, 400,
     "outside the allowed root"),
    ([{"type": "text", "text": "What is this?"}], {}, 400, "no image"),
])
def test_bad_requests_get_an_openai_error_saying_what_to_fix(client, content, extra, status, message):
    import re

    if content in ("THERMAL", "TRUNCATED"):
        url = data_uri(THERMAL, "image/png")
        if content == "TRUNCATED":  # the first 300 bytes of the PNG
            url = "data:image/png;base64," + base64.b64encode(THERMAL.read_bytes()[:300]).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "detect"}]
        extra = {"band_set": "thermal8", **extra}
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="nano", messages=[{"role": "user", "content": content}],
                                       extra_body=extra or None)
    assert raised.value.status_code == status
    assert re.search(message, raised.value.body["message"]), raised.value.body


def test_a_symlink_out_of_the_root_is_refused(tmp_path, nano_artifacts):
    root = tmp_path / "root"
    root.mkdir()
    (root / "frame.png").symlink_to(THERMAL)  # THERMAL lies outside this root
    process, base = start(nano_artifacts, "--allow-root", str(root))
    try:
        plain = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="outside the allowed root"):
            ask(plain, "frame.png", "detect", band_set="thermal8")
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_auth_is_refused_without_the_key_and_health_needs_none(server):
    import urllib.error
    import urllib.request

    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    right = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in right.models.list()] == ["nano"]
    assert json.loads(urllib.request.urlopen(f"{server}/health").read())["status"] == "ok"
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{server}/metrics")
    assert raised.value.code == 401


def test_a_full_queue_answers_503_with_retry_after(nano_artifacts):
    process, base = start(nano_artifacts, "--max-batch", "1", "--queue-depth", "1", "--batch-wait-ms", "0")
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        url = data_uri(THERMAL, "image/png")

        def one(_):
            try:
                return ask(client, url, "detect", band_set="thermal8").choices[0].message.content
            except openai.APIStatusError as err:
                return err.status_code, err.response.headers.get("retry-after")

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(one, range(8)))
        refused = [o for o in outcomes if isinstance(o, tuple)]
        answered = [o for o in outcomes if isinstance(o, str)]
        assert refused and all(o == (503, "1") for o in refused)
        assert answered and len(set(answered)) == 1  # every answer the same, none lost or mixed
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_sigterm_finishes_running_requests_and_refuses_new_ones(nano_artifacts):
    process, base = start(nano_artifacts)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    url = data_uri(THERMAL, "image/png")
    results = []
    running = threading.Thread(target=lambda: results.append(ask(client, url, "detect", band_set="thermal8")))
    running.start()
    time.sleep(0.3)  # the request is in
    process.send_signal(signal.SIGTERM)
    running.join(timeout=120)
    assert results and results[0].choices[0].message.content  # it was answered, not dropped
    # uvicorn re-raises the signal once it has shut down, so the exit is by SIGTERM, not an error
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in process.stdout.read()
    with pytest.raises(openai.APIConnectionError):
        ask(client, url, "detect", band_set="thermal8")


def test_a_folder_of_band_files_under_the_root_reads_as_eov_run_reads_it(client, nano_artifacts):
    folder = CALIB / "multispectral" / "bigearthnet_s2_36_85"  # one GeoTIFF per Sentinel-2 band
    answer = ask(client, str(folder.relative_to(CALIB)), task="classification")
    want = eov_run(nano_artifacts, folder, "--task", "classification")["results"][0]
    assert answer.choices[0].message.content == want["text"]
    assert len(answer.model_extra["eov"]["inputs"][0]["sources"]) == len(want["inputs"][0]["sources"]) > 3
    bands = ",".join(str(p.relative_to(CALIB)) for p in sorted(folder.glob("*_B0[234].tif")))
    assert ask(client, bands, task="classification").choices[0].message.content  # comma-joined band files


def test_continuous_batching_answers_concurrent_plain_and_streamed_requests_as_eov_run(nano_fused_artifacts):
    process, base = start(nano_fused_artifacts, "--max-batch", "3")
    try:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        url = data_uri(THERMAL, "image/png")
        asks = [("detect", False), ("Describe the image.", True), ("How many people are there?", False),
                ("caption", True), ("Is there a car in the image?", False)]

        def one(item):
            text, stream = item
            if not stream:
                return ask(client, url, text, band_set="thermal8").choices[0].message.content
            chunks = list(ask(client, url, text, band_set="thermal8", stream=True))
            return "".join(c.choices[0].delta.content or "" for c in chunks)

        with ThreadPoolExecutor(5) as pool:  # five requests, three rows
            got = list(pool.map(one, asks))
        for (text, _), answer in zip(asks, got):
            flags = ["--task", text] if text in ("detect", "caption") else ["--prompt", text]
            want = eov_run(nano_fused_artifacts, THERMAL, *flags, "--band-set", "thermal8")["results"][0]
            assert answer == want["text"], text
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert "continuous batching, 3 rows" in process.stdout.read()


def test_each_api_key_is_held_to_its_share_with_429(nano_artifacts):
    process, base = start(nano_artifacts, "--api-key", "ground-a", "--api-key", "ground-b", "--per-key-limit", "1",
                          "--max-batch", "1", "--batch-wait-ms", "0")
    try:
        url = data_uri(THERMAL, "image/png")

        def one(key):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
            try:
                return key, ask(client, url, "detect", band_set="thermal8").choices[0].message.content
            except openai.APIStatusError as err:
                return key, (err.status_code, err.response.headers.get("retry-after"), err.body["message"])

        with ThreadPoolExecutor(7) as pool:
            outcomes = list(pool.map(one, ["ground-a"] * 6 + ["ground-b"]))
        refused = [o for k, o in outcomes if isinstance(o, tuple)]
        assert refused and all(o[:2] == (429, "1") and "--per-key-limit 1" in o[2] for o in refused)
        assert any(k == "ground-a" and isinstance(o, str) for k, o in outcomes)  # a's share was served
        assert isinstance(outcomes[-1][1], str)  # b is not held back by a's requests
        with pytest.raises(openai.AuthenticationError):
            one_client = openai.OpenAI(base_url=f"{base}/v1", api_key="ground-c", max_retries=0)
            one_client.models.list()
    finally:
        process.terminate()
        process.wait(timeout=60)
