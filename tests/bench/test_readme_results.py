"""The README's results table is the latest eov-bench JSON rendered, never figures typed by hand."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("readme_results", ROOT / "benchmarks" / "readme_results.py")
readme_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_results)


def test_the_readme_table_is_the_latest_bench_json():
    assert readme_results.main(["--check"]) == 0, "run python benchmarks/readme_results.py"


def test_the_table_follows_the_json_and_names_its_run():
    report = json.loads(readme_results.LATEST.read_text())
    text = readme_results.render(report, "r.json")
    assert report["git_commit"][:7] in text and report["date"] in text and f"--rounds {report['rounds']}" in text
    changed = copy.deepcopy(report)
    first_quantized = next(name for name in changed["rows"] if "int8" in name)
    changed["rows"][first_quantized]["speedup_e2e"] = 123.456
    assert "**123.46**" in readme_results.render(changed, "r.json") and "**123.46**" not in text


def test_a_readme_without_the_markers_is_refused():
    with pytest.raises(SystemExit, match="markers"):
        readme_results.replace_block("# a readme\n", "table")
    block = readme_results.replace_block(f"a\n{readme_results.BEGIN}\nold\n{readme_results.END}\nb\n", "new")
    assert block == f"a\n{readme_results.BEGIN}\nnew\n{readme_results.END}\nb\n"


def test_the_llamacpp_losses_sentence_counts_the_cells_where_llamacpp_is_faster():
    section = copy.deepcopy(json.loads(readme_results.LATEST.read_text())["llamacpp"])
    ours = [row for rows in section["threads"].values() for row in rows.values() if "decode_vs_llamacpp" in row]
    for row in ours:  # every cell ours: faster decode, slower first token
        row["decode_vs_llamacpp"], row["ttft_vs_llamacpp"] = 0.9, 1.2
    assert readme_results.llamacpp_losses(section) == (
        f"llama.cpp decodes faster in 0 of {len(ours)} cells; its first token is sooner in {len(ours)} of {len(ours)}.")
    ours[0]["decode_vs_llamacpp"], ours[1]["decode_vs_llamacpp"] = 1.004, 1.31  # 1.004 prints as 1.00: a tie
    sentence = readme_results.llamacpp_losses(section)
    assert sentence.startswith(f"llama.cpp decodes faster in 1 of {len(ours)} cells, by up to 1.31x (")
