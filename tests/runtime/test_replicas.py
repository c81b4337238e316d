"""eov-serve --replicas: the same app on Ray Serve replicas (a local Ray instance started by eov-serve)."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from tests.runtime.test_server import CALIB, THERMAL, ask, data_uri, eov_run, free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time on the test machine


def test_replicas_answer_as_one_process_and_stop_on_sigterm(nano_fused_artifacts):
    port = free_port()
    process = subprocess.Popen([str(Path(sys.executable).parent / "eov-serve"), "--artifacts", str(nano_fused_artifacts),
                                "--port", str(port), "--no-verify", "--model-name", "nano", "--replicas", "2",
                                "--allow-root", str(CALIB), "--api-key", "k"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=dict(os.environ, PYTHONWARNINGS="ignore", RAY_USAGE_STATS_ENABLED="0"))
    try:
        health = f"http://127.0.0.1:{port}/health"
        for _ in range(240):  # Ray, the proxy and two replicas opening the artifacts
            try:
                if b'"ok"' in urllib.request.urlopen(health, timeout=2).read():
                    break
            except OSError:
                pass
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.5)
        else:
            raise AssertionError("the replicas did not come up")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=120)
        url = data_uri(THERMAL, "image/png")
        questions = ["detect", "Describe the image.", "How many people are there?", "caption"]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda q: ask(client, url, q, band_set="thermal8").choices[0].message.content,
                                questions))
        for question, answer in zip(questions, got):
            flags = ["--task", question] if question in ("detect", "caption") else ["--prompt", question]
            assert answer == eov_run(nano_fused_artifacts, THERMAL, *flags, "--band-set", "thermal8")["results"][0]["text"]
        streamed = list(ask(client, url, "Describe the image.", band_set="thermal8", stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == got[1]
        with pytest.raises(openai.BadRequestError, match="outside the allowed root"):
            ask(client, "/etc/hostname", "detect")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert "from 2 Ray Serve replicas" in output
