"""The engine plan: what to build per graph for one device, as a typed, serializable object.

Everything here is decided on the CPU from the artifacts' manifest: optimization profiles (the
decoder gets one for the prefill, past length 0, and one for decode steps against the runtime's
preallocated cache, which also takes a question's own tokens on a shared prefix's cache; the encoder
one for views), precisions, workspace, timing cache, a memory
estimate checked against the device, and the equivalent ``trtexec`` commands. The builder
(:mod:`eov_edge.export.tensorrt_build`) and the TensorRT runner only read it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eov_edge.core import manifest as mf
from eov_edge.core.errors import EngineError
from eov_edge.export.devices import DevicePreset, resolve_precision

PLAN_FILE = "engine_plan.json"
PLAN_VERSION = 1
# Most tokens one decode-profile call feeds on top of a cache: a question's own tokens after the
# image block every question about the same views shares (Pipeline.answer_questions). Longer
# suffixes are prefilled whole instead.
MAX_SUFFIX_TOKENS = 64


@dataclass
class ShapeRange:
    min: list[int]
    opt: list[int]
    max: list[int]

    def check(self, name: str) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise EngineError(f"{name}: min/opt/max of different ranks")
        for lo, mid, hi in zip(self.min, self.opt, self.max):
            if not (0 <= lo <= mid <= hi):
                raise EngineError(f"{name}: needs 0 <= min <= opt <= max per axis, got {self.min} {self.opt} {self.max}")


@dataclass
class Profile:
    name: str
    shapes: dict[str, ShapeRange]


@dataclass
class GraphEnginePlan:
    graph: str
    onnx_file: str
    onnx_sha256: str
    engine_file: str
    precision: str  # fp16 | int8 | fp8 | w4a16
    profiles: list[Profile]
    source_sha256: str = ""  # the artifacts' graph (onnx_file may be an FP16 conversion of it)
    # what a Q/DQ graph carries between its pairs, as its recipe recorded and the gate scored:
    # float16 or float32; "" for Q/DQ graphs quantized before the recipes recorded it
    activations: str = ""

    @property
    def quantized(self) -> bool:
        return self.precision in ("int8", "fp8", "w4a16")


@dataclass
class EnginePlan:
    device: str
    compute_capability: list[int]
    tensorrt: str  # the TensorRT version the device ships (major decides typing)
    precision: str
    max_batch: int
    max_views: int
    max_seq: int
    max_kv: int
    workspace_mb: int
    timing_cache: str
    graphs: list[GraphEnginePlan]
    memory_mb: dict = field(default_factory=dict)
    plan_version: int = PLAN_VERSION

    @property
    def strongly_typed(self) -> bool:
        """TensorRT 11: every network is strongly typed (weak typing and its precision flags are gone)."""
        return int(self.tensorrt.split(".")[0]) >= 11

    def graph_strongly_typed(self, graph: "GraphEnginePlan") -> bool:
        """Whether ``graph`` builds strongly typed: everything on 11; on 10.x (10.3 on JetPack 6) the
        FP32, FP16 and w4a16 graphs too, so the FP32 islands of the FP16 conversion (norms, softmax,
        rotary angles) hold on the Orin as on 11; and Q/DQ graphs whose recipe recorded what they
        carry between their pairs (FP16 scales: FP16; FP32), which is what the gate scored. Q/DQ
        graphs quantized before the recipes recorded it build on 10.x weakly typed with the FP16 flag."""
        return (self.strongly_typed or graph.precision in ("fp32", "fp16", "w4a16")
                or graph.activations in ("float16", "float32"))

    def graph(self, name: str) -> GraphEnginePlan:
        return next(g for g in self.graphs if g.graph == name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "EnginePlan":
        data = json.loads(text)
        if data.get("plan_version") != PLAN_VERSION:
            raise EngineError(f"engine plan version {data.get('plan_version')}, this eov-edge reads {PLAN_VERSION}")
        graphs = [GraphEnginePlan(**{**g, "profiles": [
            Profile(p["name"], {k: ShapeRange(**v) for k, v in p["shapes"].items()}) for p in g["profiles"]]})
            for g in data["graphs"]]
        return cls(**{**data, "graphs": graphs})


def _encoder_profiles(m: mf.Manifest, max_views_total: int) -> dict[str, list[Profile]]:
    size, channels = m.image_size, 16
    feature_dim = next(t for t in m.graphs[mf.PROJECTOR].inputs if t.name == mf.FEATURES).shape
    tokens, dim = int(feature_dim[1]), int(feature_dim[2])

    def views(rest: list[int]) -> ShapeRange:
        return ShapeRange([1, *rest], [1, *rest], [max_views_total, *rest])

    return {
        mf.ENCODER: [Profile("views", {mf.PIXEL_VALUES: views([channels, size, size]), mf.MODALITY_IDS: views([])})],
        mf.PROJECTOR: [Profile("views", {mf.FEATURES: views([tokens, dim])})],
    }


def _decoder_profiles(m: mf.Manifest, max_batch: int, max_seq: int, max_kv: int) -> list[Profile]:
    dim = m.embedding["shape"][1]
    heads, head_dim = m.num_kv_heads, m.head_dim
    opt_seq = min(max_seq, m.image_tokens_per_view + 32)  # one view and a short question
    opt_kv = min(max_kv, opt_seq + 32)

    def past(lo: int, mid: int, hi: int, batch: int = max_batch) -> ShapeRange:
        return ShapeRange([1, heads, lo, head_dim], [1, heads, mid, head_dim], [batch, heads, hi, head_dim])

    prefill = {mf.INPUTS_EMBEDS: ShapeRange([1, 1, dim], [1, opt_seq, dim], [max_batch, max_seq, dim]),
               mf.ATTENTION_MASK: ShapeRange([1, 1], [1, opt_seq], [max_batch, max_seq]),
               mf.POSITION_IDS: ShapeRange([1, 1], [1, opt_seq], [max_batch, max_seq])}
    prefill.update((name, past(0, 0, 0)) for name in mf.past_names(m.num_layers))
    # Decode against the runtime's fixed-capacity cache: past = capacity slots, mask = capacity + 1;
    # tuned for one token per row (opt), up to MAX_SUFFIX_TOKENS (a question's suffix on a shared prefix).
    suffix = min(max_seq, MAX_SUFFIX_TOKENS)
    decode = {mf.INPUTS_EMBEDS: ShapeRange([1, 1, dim], [1, 1, dim], [max_batch, suffix, dim]),
              mf.ATTENTION_MASK: ShapeRange([1, 2], [1, opt_kv + 1], [max_batch, max_kv + suffix]),
              mf.POSITION_IDS: ShapeRange([1, 1], [1, 1], [max_batch, suffix])}
    decode.update((name, past(1, opt_kv, max_kv)) for name in mf.past_names(m.num_layers))
    return [Profile("prefill", prefill), Profile("decode", decode)]


def check_profiles_against_graph(entry: mf.GraphEntry, profiles: list[Profile], graph: str) -> None:
    """Every input covered, ranks and fixed sizes as the ONNX graph says, one range per named axis
    within a profile (except the decoder's mask length, which is past + seq)."""
    specs = {t.name: t for t in entry.inputs}
    for profile in profiles:
        where = f"{graph} profile {profile.name!r}"
        missing, extra = set(specs) - set(profile.shapes), set(profile.shapes) - set(specs)
        if missing or extra:
            raise EngineError(f"{where}: inputs missing {sorted(missing)}, unknown {sorted(extra)}")
        named: dict[str, tuple] = {}
        for name, rng in profile.shapes.items():
            rng.check(f"{where} {name}")
            spec = specs[name]
            if len(rng.min) != len(spec.shape):
                raise EngineError(f"{where} {name}: rank {len(rng.min)}, the graph's is {len(spec.shape)}")
            for axis, want in enumerate(spec.shape):
                triple = (rng.min[axis], rng.opt[axis], rng.max[axis])
                if isinstance(want, int) and want > 0 and triple != (want, want, want):
                    raise EngineError(f"{where} {name} axis {axis}: fixed size {want}, profile says {triple}")
                if isinstance(want, str) and want:
                    seen = named.setdefault(want, (triple, name))
                    if seen[0] != triple:
                        raise EngineError(f"{where}: axis {want!r} is {triple} in {name} but {seen[0]} in {seen[1]}")
        if graph == mf.DECODER:
            mask, embeds = profile.shapes[mf.ATTENTION_MASK], profile.shapes[mf.INPUTS_EMBEDS]
            past = profile.shapes[mf.past_names(1)[0]]
            for part in ("min", "opt", "max"):
                total = getattr(past, part)[2] + getattr(embeds, part)[1]
                if getattr(mask, part)[1] != total:
                    raise EngineError(f"{where}: mask length {part} {getattr(mask, part)[1]} != past + seq {total}")


def _graph_bytes(directory: Path, entry: mf.GraphEntry) -> int:
    size = (directory / entry.file).stat().st_size
    if entry.external_data:
        size += (directory / entry.external_data).stat().st_size
    return size


def make_plan(artifacts: Path, device: DevicePreset, precision: str = "auto", max_batch: int = 1,
              max_views: int = 4, max_seq: int | None = None, max_kv: int | None = None,
              workspace_mb: int | None = None) -> EnginePlan:
    """The plan for ``artifacts`` on ``device``; raises EngineError on anything impossible."""
    artifacts = Path(artifacts)
    manifest = mf.load_manifest(artifacts, verify_hashes=False)
    if manifest.decoder_kind != mf.PORTABLE_DECODER:
        raise EngineError(f"{artifacts}: its decoder is ONNX Runtime's fused CPU graph ({manifest.decoder_kind}), which "
                          "TensorRT cannot import; export with --decoder portable (the default) for engines")
    precisions = resolve_precision(device, precision, manifest)  # refuses before any other work
    if max_batch < 1 or max_views < 1:
        raise EngineError("--max-batch and --max-views must be >= 1")
    max_seq = max_seq or manifest.max_context
    max_kv = max_kv or manifest.max_context - 1
    if max_seq > manifest.max_context or max_kv + 1 > manifest.max_context:
        raise EngineError(f"--max-seq {max_seq} / --max-kv {max_kv} exceed the model's context of "
                          f"{manifest.max_context} (the KV cache holds at most context - 1 slots)")
    if max_seq < manifest.image_tokens_per_view + 2:
        raise EngineError(f"--max-seq {max_seq} cannot hold one view ({manifest.image_tokens_per_view} tokens) "
                          "and a question")
    workspace_mb = workspace_mb or int(min(4096, device.memory_gb * 1024 / 8))
    profiles = _encoder_profiles(manifest, max_batch * max_views)
    profiles[mf.DECODER] = _decoder_profiles(manifest, max_batch, max_seq, max_kv)
    graphs = []
    for name in (mf.ENCODER, mf.PROJECTOR, mf.DECODER):
        entry = manifest.graphs[name]
        check_profiles_against_graph(entry, profiles[name], name)
        tools = (manifest.quantization or {}).get("graphs", {}).get(name, {})
        activations = tools.get("activation_dtype", "")  # float16 | float32 | "" (not recorded)
        graphs.append(GraphEnginePlan(name, entry.file, entry.sha256, f"{name}.engine", precisions[name],
                                      profiles[name], source_sha256=entry.sha256, activations=activations))
    # Memory: weights (FP32 files halve in FP16; quantized files already hold their weights), the KV
    # cache at its largest in the dtype the runtime feeds it (FP32: the graphs keep FP32 I/O; past +
    # present buffers), the decoder's largest activations (a full-length prompt: its hidden, MLP and
    # attention-score tensors), and the builder workspace.
    weights = sum(_graph_bytes(artifacts, manifest.graphs[g.graph]) / (2 if g.precision == "fp16" else 1)
                  for g in graphs)
    kv = 2 * 2 * manifest.num_layers * max_batch * manifest.num_kv_heads * (max_kv + 1) * manifest.head_dim * 4
    text = manifest.model_config.get("text_config", {})
    hidden, mlp = text.get("hidden_size", 0), text.get("intermediate_size", 0)
    heads = text.get("num_attention_heads", manifest.num_kv_heads)
    activations = 4 * max_batch * max_seq * (4 * hidden + 2 * mlp + heads * (max_kv + max_seq))
    memory = {"weights_mb": round(weights / 2**20, 1), "kv_cache_mb": round(kv / 2**20, 1),
              "activations_mb": round(activations / 2**20, 1), "workspace_mb": workspace_mb,
              "device_budget_mb": int(device.memory_gb * 1024)}
    memory["total_mb"] = round(memory["weights_mb"] + memory["kv_cache_mb"] + memory["activations_mb"]
                               + workspace_mb, 1)
    if memory["total_mb"] > memory["device_budget_mb"]:
        raise EngineError(
            f"{device.name}: about {memory['total_mb']:.0f} MiB needed (weights {memory['weights_mb']:.0f}, KV cache "
            f"{memory['kv_cache_mb']:.0f}, activations {memory['activations_mb']:.0f}, workspace {workspace_mb}) but about {memory['device_budget_mb']} MiB are "
            "usable; quantize (w4a16 / int8), lower --max-seq / --max-kv / --max-batch, or use a larger device"
        )
    return EnginePlan(device.name, list(device.compute_capability), device.tensorrt, precisions[mf.DECODER],
                      max_batch, max_views, max_seq, max_kv, workspace_mb, "timing.cache", graphs, memory)


def _shape_arg(shapes: dict[str, ShapeRange], part: str) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in getattr(rng, part))}" for name, rng in shapes.items())


def trtexec_single_profile(graph: GraphEnginePlan) -> Profile:
    """trtexec gets one profile per engine: the decoder's spans prefill and decode, tuned for decode
    (the steps that repeat); the Python builder keeps the two profiles apart."""
    if len(graph.profiles) == 1:
        return graph.profiles[0]
    prefill, decode = graph.profiles
    shapes = {}
    for name in prefill.shapes:
        a, b = prefill.shapes[name], decode.shapes[name]
        shapes[name] = ShapeRange([min(x, y) for x, y in zip(a.min, b.min)], list(b.opt),
                                  [max(x, y) for x, y in zip(a.max, b.max)])
    if mf.ATTENTION_MASK in shapes:  # mask length = past + seq at every point of the range
        past = shapes[mf.past_names(1)[0]]
        embeds = shapes[mf.INPUTS_EMBEDS]
        mask = shapes[mf.ATTENTION_MASK]
        mask.min[1] = past.min[2] + embeds.min[1]
        mask.opt[1] = past.opt[2] + embeds.opt[1]
        mask.max[1] = past.max[2] + embeds.max[1]
    return Profile("all", shapes)


def trtexec_commands(plan: EnginePlan, onnx_dir: str = ".", engine_dir: str = ".",
                     converted_dir: str | None = None) -> list[list[str]]:
    """One trtexec command (argv) per graph, equivalent to the Python build. Graphs converted to
    FP16 for TensorRT 11 (``*.fp16.onnx``) are read from ``converted_dir``."""
    commands = []
    for graph in plan.graphs:
        profile = trtexec_single_profile(graph)
        source_dir = converted_dir if converted_dir and graph.onnx_file.endswith(".fp16.onnx") else onnx_dir
        argv = ["trtexec", f"--onnx={source_dir}/{graph.onnx_file}", f"--saveEngine={engine_dir}/{graph.engine_file}",
                f"--minShapes={_shape_arg(profile.shapes, 'min')}", f"--optShapes={_shape_arg(profile.shapes, 'opt')}",
                f"--maxShapes={_shape_arg(profile.shapes, 'max')}",
                f"--memPoolSize=workspace:{plan.workspace_mb}M", f"--timingCacheFile={engine_dir}/{plan.timing_cache}",
                # build only: trtexec's own inference run would feed random values, and random int64
                # modality ids index past the encoder's modality table (its Gather reads out of range)
                "--skipInference"]
        argv += precision_flags(plan, graph)
        commands.append(argv)
    return commands


def precision_flags(plan: EnginePlan, graph: GraphEnginePlan) -> list[str]:
    """trtexec precision flags. Strongly typed graphs (:meth:`EnginePlan.graph_strongly_typed`) take
    their precision from the ONNX (FP16 graphs converted before the build, w4a16's FP16 scales, Q/DQ
    on 11). INT8/FP8 on 10.x: weakly typed with --fp16, plus the quantized type's flag. Never --int4:
    it only enables INT4 I/O plugins; w4a16's INT4 weights come from its DequantizeLinear nodes."""
    if graph.precision == "fp32":  # the reference engine: FP32 throughout, TF32 off
        return ["--stronglyTyped", "--noTF32"]
    if plan.graph_strongly_typed(graph):
        return ["--stronglyTyped"]
    return ["--fp16", {"int8": "--int8", "fp8": "--fp8"}[graph.precision]]


SCRIPT_FILE = "build_engines.sh"


def trtexec_script(plan: EnginePlan) -> str:
    """A POSIX shell script that builds every engine with JetPack's trtexec:
    ``sh build_engines.sh ARTIFACTS_DIR [ENGINE_DIR]`` (engines default to the script's folder)."""
    lines = [
        "#!/bin/sh",
        f"# eov-export engine plan for {plan.device} (TensorRT {plan.tensorrt}, sm{plan.compute_capability[0]}"
        f"{plan.compute_capability[1]}), precision {plan.precision}; generated from {PLAN_FILE}.",
        "# trtexec builds one optimization profile per engine (the decoder's spans prefill and decode).",
        "set -e",
        'ART="${1:?usage: sh build_engines.sh ARTIFACTS_DIR [ENGINE_DIR]}"',
        'HERE="$(cd "$(dirname "$0")" && pwd)"',
        'OUT="${2:-$HERE}"',
        'mkdir -p "$OUT"',
        'command -v trtexec >/dev/null || PATH="$PATH:/usr/src/tensorrt/bin"  # JetPack installs it here',
        "# trtexec's banner names its version ([TensorRT v100300] is 10.3.0): 11 builds strongly typed only,",
        "# 10.x strongly typed except INT8/FP8 (precision flags); the commands below are for one of them.",
        "V=$(trtexec --help 2>&1 | sed -n 's/.*TensorRT v\\([0-9][0-9]*\\)\\].*/\\1/p' | head -n 1)",
        f'if [ -n "$V" ] && [ $((V / 10000)) -ne {plan.tensorrt.split(".")[0]} ]; then',
        f'    echo "this script is for TensorRT {plan.tensorrt.split(".")[0]}.x, trtexec here is $V; plan again with '
        f'eov-export engine for this TensorRT" >&2',
        "    exit 1",
        "fi",
    ]
    lines += ['LOG="$OUT/build.log"', ': > "$LOG"']
    for argv in trtexec_commands(plan, onnx_dir="$ART", engine_dir="$OUT", converted_dir="$HERE"):
        command = " ".join(f'"{a}"' if "$" in a else shlex.quote(a) for a in argv)
        lines.append(f'{command} >> "$LOG" 2>&1 || {{ tail -n 40 "$LOG" >&2; echo "trtexec failed; the whole log: '
                     f'$LOG" >&2; exit 1; }}')
    lines += _engines_json_lines(plan)
    return "\n".join(lines) + "\n"


def _engines_json_lines(plan: EnginePlan) -> list[str]:
    """Shell lines that write engines.json (the metadata the TensorRT runner checks) from what trtexec
    reported: its version (banner) and the GPU's compute capability (its device information), and the
    engines' sha256; the rest is known here."""
    from eov_edge.runtime.engine_meta import META_FILE, META_VERSION, EngineMeta

    engines = []
    for index, graph in enumerate(plan.graphs):
        meta = EngineMeta(graph.graph, graph.engine_file, f"@SHA{index}@", "@TRT@", "@CC@", plan.device,
                          graph.precision, [asdict(trtexec_single_profile(graph))], graph.onnx_file,
                          graph.onnx_sha256, graph.source_sha256)
        engines.append(asdict(meta))
    text = json.dumps({"meta_version": META_VERSION, "engines": engines, "plan": json.loads(plan.to_json()),
                       "built_on": "@HOST@"}, indent=1)
    text = text.replace('"@TRT@"', '"$TRT"').replace('"@HOST@"', '"$(uname -srm)"')
    text = text.replace('"@CC@"', "[$CC_MAJOR, $CC_MINOR]")
    for index in range(len(plan.graphs)):
        text = text.replace(f'"@SHA{index}@"', f'"$SHA{index}"')
    lines = [
        "# engines.json: what eov-run --backend tensorrt checks before it loads an engine",
        "CC=$(sed -n 's/.*Compute Capability: *\\([0-9][0-9]*\\)\\.\\([0-9][0-9]*\\).*/\\1 \\2/p' \"$LOG\" | head -n 1)",
        'if [ -z "$V" ] || [ -z "$CC" ]; then',
        '    echo "engines built, but trtexec reported no TensorRT version or compute capability: no engines.json '
        '(eov-run --backend tensorrt refuses engines without it); see $LOG" >&2',
        "    exit 1",
        "fi",
        'TRT="$((V / 10000)).$((V / 100 % 100)).$((V % 100))"',
        'CC_MAJOR=${CC% *}',
        'CC_MINOR=${CC#* }',
    ]
    for index, graph in enumerate(plan.graphs):
        lines.append(f'SHA{index}=$(sha256sum "$OUT/{graph.engine_file}" | cut -d " " -f 1)')
    lines += [f'cat > "$OUT/{META_FILE}.tmp" <<EOF', text, "EOF", f'mv "$OUT/{META_FILE}.tmp" "$OUT/{META_FILE}"',
              f'echo "engines and {META_FILE} in $OUT"']
    return lines
