"""One measurement in a fresh process: ``python -m eov_edge.bench.worker KIND ARGS_JSON``.

eov-bench times every row in its own process, one after the other (the runtime without PyTorch
loaded, as on a device; the baseline without ONNX Runtime sessions beside it; no thread pool shared
between rows). :func:`run_worker` starts one and returns what it printed: the last stdout line, JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from eov_edge.core.errors import EOVError


class WorkerError(EOVError, RuntimeError):
    """A measurement process failed; the message carries the end of its stderr."""


def run_worker(measurement: str, /, **arguments) -> dict:
    """Run one measurement (row, peak, decoder, llamacpp, questions, questions_decoder) in a fresh process.

    ``measurement`` is positional-only: the arguments of a row or decoder measurement carry their
    own ``kind`` (the runtime kind being timed).
    """
    done = subprocess.run([sys.executable, "-m", "eov_edge.bench.worker", measurement, json.dumps(arguments)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise WorkerError(f"the {measurement} measurement of {arguments.get('where')} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(measurement: str, arguments: dict) -> dict:
    from eov_edge.bench import measure as m

    draft = Path(arguments["draft"]) if arguments.get("draft") else None
    if measurement == "row":
        return m.time_row(arguments["kind"], arguments["where"], arguments["batch"], arguments["max_new"],
                          arguments["repeats"], draft=draft)
    if measurement == "peak":
        return {"peak_rss_mb": m.peak_rss_row(arguments["kind"], arguments["where"], arguments["batch"],
                                              arguments["max_new"], draft=draft)}
    if measurement == "decoder":
        return m.time_decoder(arguments["kind"], arguments["where"], arguments.get("ids"), arguments["max_new"],
                              arguments["repeats"], embeds=arguments.get("embeds"), threads=arguments.get("threads"),
                              gguf=arguments.get("gguf"), prefill=arguments.get("prefill", "onnxruntime"))
    if measurement == "llamacpp":
        import numpy as np

        from eov_edge.bench.llamacpp_decoder import time_llamacpp

        return time_llamacpp(arguments["where"], np.load(arguments["embeds"])[0], arguments["max_new"],
                             arguments["repeats"], arguments["threads"], arguments["eos_token_id"],
                             arguments["exact_f32"], arguments["context"])
    if measurement == "questions":
        return m.time_questions(arguments["kind"], arguments["where"], arguments["questions"], arguments["max_new"],
                              arguments["repeats"], arguments["mode"])
    if measurement == "questions_decoder":
        return m.time_questions_decoder(arguments["kind"], arguments["where"], arguments["ids"], arguments["shared"],
                                      arguments["max_new"], arguments["repeats"], arguments["mode"])
    raise ValueError(f"unknown measurement {measurement!r}")


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], json.loads(sys.argv[2]))))
