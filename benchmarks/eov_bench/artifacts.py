"""The artifacts eov-bench times: checked when supplied, made (exported, quantized without the gate)
when not, and reused from an earlier run's OUT/artifacts only while current."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from eov_edge.bench.rows import Row
from eov_edge.core.errors import EOVError
from eov_edge.quantize.recipes import DEFAULT_INT4_BLOCK_SIZE


class BenchError(EOVError, ValueError):
    """Artifacts given to the benchmark that do not belong to its model or recipe."""


def manifest_of_weights(directory: Path, weights_hash: str):
    """(manifest, None) if ``directory``'s files match its manifest and it records these weights;
    else (manifest or None, why not): the check both supplied and cached artifacts pass."""
    from eov_edge.core import manifest as mf

    try:
        manifest = mf.load_manifest(directory)
    except mf.ManifestError as err:
        return None, str(err)
    recorded = manifest.produced_by.get("weights_sha256")
    if recorded != weights_hash:
        return manifest, "of other weights" if recorded else "without the weights' hash"
    return manifest, None


def check_supplied_artifacts(directory: Path, weights_hash: str, recipe: str | None,
                             int4_block_size: int = DEFAULT_INT4_BLOCK_SIZE) -> dict:
    """Artifacts passed in (``--artifacts``, ``--recipe-artifacts``) must hold the benchmarked model's
    weights (the manifest's ``weights_sha256``) and, for a recipe row, that recipe's graphs (INT4: in
    the benchmark's block size, which ORT GenAI's int4 row matches); returns the manifest's gate
    summary (empty for FP32 artifacts)."""
    manifest, why = manifest_of_weights(directory, weights_hash)
    if manifest is None:
        raise BenchError(why)
    if why and manifest.produced_by.get("weights_sha256") is None:
        raise BenchError(f"{directory}: its manifest does not record the weights' hash (exported before "
                         "eov-edge recorded it); re-export with eov-export onnx (and re-quantize) to time it")
    if why:
        raise BenchError(f"{directory}: exported from other weights ({manifest.produced_by.get('source')}) than "
                         "the benchmarked model; pass artifacts of this preset or checkpoint")
    made_with = (manifest.quantization or {}).get("recipe")
    if made_with != recipe:
        want = f"the {recipe} recipe's artifacts" if recipe else "FP32 artifacts (eov-export onnx)"
        raise BenchError(f"{directory}: made with {made_with or 'no recipe (FP32)'}, this row takes {want}")
    blocks = manifest.quantization.get("graphs", {}).get("decoder", {}).get("block_size") if recipe else None
    if blocks is not None and blocks != int4_block_size:
        raise BenchError(f"{directory}: INT4 in blocks of {blocks} weights, the benchmark's are {int4_block_size}; "
                         f"pass --int4-block-size {blocks}")
    return (manifest.quantization or {}).get("gate") or {}


def stale_cache(folder: Path, weights_hash: str) -> str | None:
    """Why an artifacts folder that an earlier run left in OUT/artifacts cannot be timed again (None:
    it can): missing or changed files, other weights, or another eov-edge version or git commit (an
    export made by older code would time that code: e.g. an encoder from before the fused CPU graphs).
    A tree with uncommitted changes counts as its commit plus "-dirty", whatever the changes."""
    from eov_edge import __version__
    from eov_edge.core import manifest as mf
    from eov_edge.core.provenance import git_commit

    if not (folder / mf.MANIFEST_FILE).is_file():
        return "not there"
    manifest, why = manifest_of_weights(folder, weights_hash)
    if why:
        return why
    made = manifest.produced_by
    now = (__version__, git_commit())
    if (made.get("eov_edge"), made.get("git_commit")) != now:
        return f"made by eov-edge {made.get('eov_edge')} at {made.get('git_commit')}, this is {now[0]} at {now[1]}"
    return None


def gate_status(gate: dict) -> str:
    """One line on a quantized row's accuracy: what its manifest's gate summary says."""
    if not gate or not gate.get("accepted"):
        return "not gated (speed and size only)"
    floats = len(gate.get("fallback") or [])
    worst = max((r.get("drop", 0.0) for r in gate.get("rows", [])), default=0.0)
    return (f"gate accepted: worst drop {worst:.2f} points (budget {gate.get('budget_points')}) on "
            f"{gate.get('examples')} held-out examples, {floats} node(s) back in float")


def int4_folder(name: str, int4_block_size: int) -> str:
    """Artifacts folder ``name``, suffixed with a non-default block size (cached folders of another
    block size are then never reused)."""
    return name if int4_block_size == DEFAULT_INT4_BLOCK_SIZE else f"{name}-b{int4_block_size}"


@dataclass
class RowArtifacts:
    """Each runtime row's artifacts folder, the drafts of speculative rows, and the quantized rows'
    accuracy status (from their manifests' gate)."""

    folders: dict[Row, Path] = field(default_factory=dict)
    drafts: dict[Row, Path] = field(default_factory=dict)
    gates: dict[Row, str] = field(default_factory=dict)


def prepare_row_artifacts(model, processor, preset: str, out: Path, recipes: tuple[str, ...],
                          artifacts: Path | None, recipe_artifacts: dict[str, Path], batch: int,
                          int4_block_size: int, draft: str | None, progress=print) -> RowArtifacts:
    """The artifacts of every runtime row: ``artifacts`` / ``recipe_artifacts`` where supplied (checked
    to hold this model's weights and the row's recipe), else exported (fused CPU and portable
    decoders) and quantized (no accuracy gate) into ``out/artifacts``, reusing current folders there."""
    from eov_edge.core import manifest as mf
    from eov_edge.core.paths import NANO_CHECKPOINT
    from eov_edge.export.onnx_export import export_onnx
    from eov_edge.model.weights import weights_sha256
    from eov_edge.quantize.build import write_ungated

    made = RowArtifacts()
    weights_hash = weights_sha256(model)
    supplied = {None: artifacts} if artifacts is not None else {}
    supplied.update({recipe: Path(d) for recipe, d in recipe_artifacts.items() if recipe in recipes})
    for recipe, directory in supplied.items():
        gate = check_supplied_artifacts(Path(directory), weights_hash, recipe, int4_block_size)
        if recipe:
            made.gates[Row.of_recipe(recipe)] = gate_status(gate)
    fp32_exported = False  # the recipes' source was (re-)exported here: their cached folders are stale
    if artifacts is None:
        # The CPU rows run ONNX Runtime's fused decoder (--decoder ort-cpu), the fastest here; the
        # portable decoder (the TensorRT engines' input) gets its own row.
        artifacts = out / "artifacts" / "fp32"
        for row, kind, folder in ((Row.FP32, mf.ORT_CPU_DECODER, artifacts),
                                  (Row.FP32_PORTABLE, mf.PORTABLE_DECODER, out / "artifacts" / "fp32-portable")):
            if why := stale_cache(folder, weights_hash):
                progress(f"exporting {preset} to {folder} ({kind} decoder; the folder there: {why})")
                export_onnx(folder, model_and_processor=(model, processor), overwrite=True, validate=False,
                            checkpoint=NANO_CHECKPOINT if preset == "nano" else None,
                            preset=None if preset == "nano" else preset, decoder=kind)
                fp32_exported = fp32_exported or row is Row.FP32
            made.folders[row] = folder
    else:
        made.folders[Row.FP32] = Path(artifacts)
    for recipe in recipes:
        row = Row.of_recipe(recipe)
        blocks = int4_block_size if recipe == "ort-cpu-int4" else None
        if recipe in supplied:
            target = Path(supplied[recipe])
        else:
            target = out / "artifacts" / (int4_folder(recipe, blocks) if blocks else recipe)
            why = "its FP32 source was exported again" if fp32_exported else stale_cache(target, weights_hash)
            if why:
                progress(f"quantizing with {recipe} (no accuracy gate: speed and size only; the folder there: {why})")
                write_ungated(artifacts, recipe, target, int4_block_size=blocks)
        made.folders[row] = target
        made.gates.setdefault(row, gate_status({}))
    if draft and batch == 1 and Row.of_recipe(draft) in made.folders:
        fp32_manifest = mf.load_manifest(made.folders[Row.FP32], verify_hashes=False)
        if fp32_manifest.decoder_kind != mf.ORT_CPU_DECODER:
            progress("no speculative row: the FP32 artifacts carry the portable decoder; drafts are checked by "
                     "ONNX Runtime's CPU decoder (eov-export onnx --decoder ort-cpu)")
        else:
            made.drafts[Row.speculative(draft)] = made.folders[Row.of_recipe(draft)]
            made.folders[Row.speculative(draft)] = made.folders[Row.FP32]
    return made
