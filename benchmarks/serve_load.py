"""eov-serve under concurrent clients against the same requests served one at a time (loopback).

    python benchmarks/serve_load.py --artifacts /tmp/small --report benchmarks/results/serve_small.json

Starts ``eov-serve`` on the artifacts (``eov-export onnx --preset small --decoder ort-cpu`` gives
random-weight ones with the fused CPU decoder, which continuous batching needs) once per batching
mode (``--batching continuous,window``: the same rows against each, one server after the other) and
sends a bounded number of chat requests from 1, 4 and 16 client threads (the official ``openai``
client), each a detection or caption question about one of the calibration images, greedy. Rows:

- ``sequential``: the same requests one after another, each waiting for the previous answer (the
  baseline every other row is a ratio against, measured in the same run);
- ``clients_N``: N threads sending the requests concurrently;
- ``same_image_4`` / ``different_images_4``: 4 clients asking 4 different questions about one image
  at once, against 4 clients asking about 4 different images (the prefix cache's effect).

Reports requests/s, generated tokens/s, latency p50/p99, and checks every response arrived once with
the answer the sequential run gave for the same request.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = [  # (file under calib_data, band set)
    ("heldout/views/grounding/grounding_06_v0.png", "thermal8"),
    ("optical/ucmerced_airplane00/airplane00.tif", None),
    ("optical/eurosat_rgb_pasture_300/Pasture_300.jpg", None),
    ("infrared/hit_uav_0_100_30_0_03306/0_100_30_0_03306.jpg", "thermal8"),
]
QUESTIONS = ["detect", "Describe the image.", "How many cars are there?", "Is there a person in the image?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".tif": "image/tiff"}[path.suffix]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def soak(request, pid: int, minutes: float) -> dict:
    """4 clients sending the sequential row's requests in turn for ``minutes``; RSS every 15 s."""
    import threading

    stop = time.perf_counter() + 60 * minutes
    answers, latencies, samples = [], [], [(0.0, rss_mb(pid))]
    counter = iter(range(10**9))
    lock = threading.Lock()

    def client() -> None:
        while time.perf_counter() < stop:
            with lock:
                i = next(counter)
            text, seconds, _ = request(i % 32)
            with lock:
                answers.append((i % 32, text))
                latencies.append(seconds)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(15)
        samples.append((round(time.perf_counter() - started), rss_mb(pid)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"clients": 4, "requests": len(answers), "wall_s": round(wall, 1),
            "requests_per_s": round(len(answers) / wall, 3), "tokens_per_s": None,
            "latency_p50_s": round(statistics.median(latencies), 3),
            "latency_p99_s": round(latencies[int(0.99 * (len(latencies) - 1))], 3),
            "server_rss_mb": samples[-1][1], "rss_first_minute_max_mb": max(r for t, r in samples if t <= 60),
            "rss_max_mb": max(r for _, r in samples), "rss_samples": samples,
            "answers": [a for _, a in answers], "soak_answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=32, help="requests per row")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batching", default="continuous,window",
                        help="eov-serve --batching modes to measure, one server each, comma separated")
    parser.add_argument("--soak-minutes", type=float, default=0.0,
                        help="then 4 clients send requests for this long; the server's RSS sampled every 15 s "
                             "(first mode only)")
    args = parser.parse_args()
    from eov_edge.core.provenance import git_commit

    modes = {}
    for index, batching in enumerate(args.batching.split(",")):
        modes[batching] = measure(args, batching, args.soak_minutes if index == 0 else 0.0)
    report = {"git_commit": git_commit(), "artifacts": str(args.artifacts), "max_batch": args.max_batch,
              "threads": args.threads, "cpu_count": os.cpu_count(), "modes": modes}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    lines = ["| batching | row | clients | requests | req/s | x sequential | tokens/s | p50 s | p99 s | server RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for batching, measured in modes.items():
        for name, r in measured["rows"].items():
            lines.append(f"| {batching} | {name} | {r['clients']} | {r['requests']} | {r['requests_per_s']} | "
                         f"{r['throughput_vs_sequential']} | {r['tokens_per_s']} | {r['latency_p50_s']} | "
                         f"{r['latency_p99_s']} | {r['server_rss_mb']} |")
    args.report.with_suffix(".md").write_text(
        f"# eov-serve under load\n\ncommit {report['git_commit']}; {args.artifacts}; --max-batch {args.max_batch}, "
        f"--threads {args.threads}, {os.cpu_count()} CPU cores, loopback\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


def measure(args, batching: str, soak_minutes: float) -> dict:
    """Every row against one eov-serve started with ``--batching batching``."""
    import tempfile

    import openai

    port = free_port()
    log = tempfile.TemporaryFile("w+")  # the server's stderr (a pipe could fill and block it)
    server = subprocess.Popen([str(Path(sys.executable).parent / "eov-serve"), "--artifacts", str(args.artifacts),
                               "--port", str(port), "--no-verify", "--model-name", "m", "--max-batch",
                               str(args.max_batch), "--threads", str(args.threads), "--queue-depth", "256",
                               "--batching", batching],
                              stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
    uris = [(data_uri(ROOT / "calib_data" / f), band_set) for f, band_set in IMAGES]

    def request(i: int, image: int | None = None, question: int | None = None) -> tuple[str, float, int]:
        uri, band_set = uris[i % len(uris) if image is None else image]
        text = QUESTIONS[(i // len(uris)) % len(QUESTIONS) if question is None else question]
        started = time.perf_counter()
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                                               {"type": "text", "text": text}]}],
            extra_body={"band_set": band_set} if band_set else None)
        return reply.choices[0].message.content, time.perf_counter() - started, reply.usage.completion_tokens

    def row(jobs, clients: int) -> dict:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda job: request(*job), jobs))
        wall = time.perf_counter() - started
        latencies = sorted(r[1] for r in results)
        return {"clients": clients, "requests": len(results), "wall_s": round(wall, 3),
                "requests_per_s": round(len(results) / wall, 3),
                "tokens_per_s": round(sum(r[2] for r in results) / wall, 1),
                "latency_p50_s": round(statistics.median(latencies), 3),
                "latency_p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
                "answers": [r[0] for r in results], "server_rss_mb": round(rss_mb(server.pid), 1)}

    try:
        request(0)  # warm up
        jobs = [(i,) for i in range(args.requests)]
        rows = {"sequential": row(jobs, 1)}
        for clients in (4, 16):
            rows[f"clients_{clients}"] = row(jobs, clients)
        rows["same_image_4"] = row([(0, 0, q) for q in range(4)] * (args.requests // 4), 4)
        # the same four questions, each about another image: the same decoding work without the shared image
        rows["different_images_4"] = row([(0, q, q) for q in range(4)] * (args.requests // 4), 4)
        if soak_minutes:
            rows["soak"] = soak(request, server.pid, soak_minutes)
        reference = rows["sequential"]["answers"]
        for name in ("clients_4", "clients_16"):
            rows[name]["answers_equal_sequential"] = rows[name]["answers"] == reference
        base = rows["sequential"]["requests_per_s"]
        for r in rows.values():
            r["throughput_vs_sequential"] = round(r["requests_per_s"] / base, 2)
            r["distinct_answers"] = len(set(r.pop("answers")))
            if "soak_answers" in r:
                r["answers_equal_sequential"] = all(reference[i] == a for i, a in r.pop("soak_answers"))
        import urllib.request

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        metrics = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                   if line and not line.startswith("#") and "bucket" not in line}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    log.seek(0)
    started = log.read().splitlines()
    return {"server": next((line for line in started if line.startswith("serving")), ""), "rows": rows,
            "metrics": metrics}


if __name__ == "__main__":
    main()
