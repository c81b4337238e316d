"""Write the README's results table from the latest eov-bench JSON, or check that it is current.

    python benchmarks/readme_results.py            # rewrite the block between the README's markers
    python benchmarks/readme_results.py --check    # exit 1 if the README's block differs (make test runs it)

The table is rendered from ``benchmarks/results/bench_small-b1/bench.json`` only: figures in the
README are the figures of one named run (date, machine, commit), never copied by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LATEST = ROOT / "benchmarks" / "results" / "bench_small-b1" / "bench.json"
BEGIN = "<!-- results:begin (benchmarks/readme_results.py writes this block) -->"
END = "<!-- results:end -->"


def render(report: dict, source: str) -> str:
    """The README block for one eov-bench report (``source``: its path, relative to the repo)."""
    m = report["machine"]
    command = (f"eov-bench --preset {report['preset']} --batch {report['batch']} --rounds {report.get('rounds', 1)}"
               + (f" --max-new-tokens {report['max_new_tokens']}" if report["max_new_tokens"] != 32 else ""))
    lines = [f"`{command}` on {report.get('date', 'an unrecorded date')}, commit `{report['git_commit'][:7]}`, "
             f"{m['cpus']} CPU cores ({m['platform'].split('-with-')[0]}), no GPU; torch {m['torch']}, onnxruntime "
             f"{m['onnxruntime']}. Model: the `{report['preset']}` preset with random weights, batch "
             f"{report['batch']}, up to {report['max_new_tokens']} new tokens; each row in its own process, "
             f"{report.get('rounds', 1)} interleaved rounds; x PyTorch is the median of ratios paired within a "
             f"round ([`{source}`]({source})).", "",
             "| backend | end to end ms | x PyTorch | first token ms | decode ms/token | peak RSS MiB | size MiB "
             "| tokens = PyTorch |", "|---|---|---|---|---|---|---|---|"]
    for name, r in report["rows"].items():
        lines.append(f"| {name} | {r['e2e_ms']['median']:.1f} | **{r['speedup_e2e']:.2f}** | "
                     f"{r['ttft_ms']['median']:.1f} | {r['decode_ms_per_token']:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['size_mb']:.0f} | {'yes' if r['tokens_identical_to_pytorch'] else 'no'} |")
    if (floors := report.get("floors")) and "runtime fp32" in report["rows"]:
        lines += ["", f"The ceiling of this machine: an FP32 runtime at both floors (first token at the measured "
                  f"GEMM rate, each decode step's weights read at the measured bandwidth) would be "
                  f"{floors['fp32_speedup_at_floors']:.2f}x this run's PyTorch; the FP32 row's decode step is "
                  f"{report['rows']['runtime fp32']['decode_vs_floor']:.2f}x its floor."]
    if peer := report.get("decoder_head_to_head"):
        versus = [f"{name.removeprefix('ours ')} {r['decode_vs_ort_genai']:.3f} / {r['ttft_vs_ort_genai']:.3f}"
                  for name, r in peer["rows"].items() if "decode_vs_ort_genai" in r]
        lines += ["", f"Against ONNX Runtime GenAI {m.get('onnxruntime_genai', '')} on the same "
                  f"weights ({peer['prompt_tokens']}-token prompt, time ratio ours / GenAI, decode / first token, "
                  "below 1 is faster): " + "; ".join(versus) + "."]
    if llama := report.get("llamacpp"):
        lines += ["", llamacpp_table(llama)]
    return "\n".join(lines)


def llamacpp_table(section: dict) -> str:
    """Our rows against llama.cpp's at the matched precision: paired time ratios ours / llama.cpp
    (below 1 is faster) with every core and with one, and peak RSS."""
    threads = sorted(section["threads"], key=int, reverse=True)
    head = " | ".join(f"{t} thread{'s' if t != '1' else ''}: decode / first token" for t in threads)
    lines = [f"Against llama.cpp {section['llama_cpp_python']} on the same weights (GGUF, "
             f"{section['prompt_tokens']}-position image prompt, batch 1; time ratio ours / llama.cpp, paired; "
             "`llamacpp-decode`: `--decoder-backend llamacpp`; `llamacpp`: and `--prefill llamacpp`):", "",
             f"| ours | vs | {head} | peak RSS |", "|---|---|" + "---|" * len(threads) + "---|"]
    first = section["threads"][threads[0]]
    for name, row in first.items():
        if "decode_vs_llamacpp" not in row:
            continue
        cells = [f"{section['threads'][t][name]['decode_vs_llamacpp']:.2f} / "
                 f"{section['threads'][t][name]['ttft_vs_llamacpp']:.2f}" for t in threads]
        lines.append(f"| {name.removeprefix('ours ')} | {row['paired_with'].removeprefix('llama.cpp ')} | "
                     + " | ".join(cells) + f" | {row['rss_vs_llamacpp']:.2f}x |")
    return "\n".join(lines + ["", llamacpp_losses(section)])


def llamacpp_losses(section: dict) -> str:
    """The sentence that says where llama.cpp is faster (a ratio above 1.00 as printed) in the table above."""
    ours = [(threads, name.removeprefix("ours "), row) for threads, rows in section["threads"].items()
            for name, row in rows.items() if "decode_vs_llamacpp" in row]
    slower = [(row["decode_vs_llamacpp"], name, threads) for threads, name, row in ours
              if round(row["decode_vs_llamacpp"], 2) > 1.0]
    sooner = sum(round(row["ttft_vs_llamacpp"], 2) > 1.0 for _, _, row in ours)
    text = f"llama.cpp decodes faster in {len(slower)} of {len(ours)} cells"
    if slower:
        ratio, name, threads = max(slower)
        text += f", by up to {ratio:.2f}x ({name}, {threads} thread{'s' if threads != '1' else ''})"
    return text + f"; its first token is sooner in {sooner} of {len(ours)}."


def block(report_path: Path = LATEST) -> str:
    return render(json.loads(report_path.read_text()), report_path.relative_to(ROOT).as_posix())


def replace_block(text: str, new_block: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no results markers ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{new_block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README's table is not the JSON's")
    args = parser.parse_args(argv)
    text = README.read_text()
    wanted = replace_block(text, block())
    if args.check:
        if wanted != text:
            print(f"README.md's results block is not {LATEST.relative_to(ROOT)} rendered; run "
                  "python benchmarks/readme_results.py", file=sys.stderr)
            return 1
        return 0
    tmp = README.with_suffix(".md.tmp")
    tmp.write_text(wanted)
    tmp.replace(README)
    return 0


if __name__ == "__main__":
    sys.exit(main())
