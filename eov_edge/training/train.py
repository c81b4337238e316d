"""PCMA training of the reference model on real data: staged, resumable, deterministic.

    eov-train --preset nano --out runs/nano

Stages (each a :class:`StageConfig`; see docs/data.md for the data of each task):
1. ``alignment``: thermal and SAR object views with the dense auxiliary head (does an object centre
   fall in this patch, does a box cover it), plus land cover from Sentinel-2; the vision trunk gets a
   dense signal before the language loss has to carry it.
2. ``viewpoint``: aerial instruction data (counting, presence, grounding, detection, captions).
3. ``imaging_physics``: SAR, multispectral and optical-from-multispectral views (land cover,
   multi-label, cross-modal); stem, modality embeddings and trunk train, the decoder stays frozen.
4. ``joint``: every task kind, everything trainable.
5. ``sensor_matching``: cross-modal examples alone, with the dense SAR/optical match and alignment
   losses (the stem frozen).
6. ``answers``: the joint stage's task mix with the language loss alone (the training-only heads'
   losses off), a fresh optimizer at half the learning rate. From nano-v6's weights, 400 such steps
   lifted classification, VQA, grounding and change; the run with it (nano-v10, shipped) clears 7 task
   kinds against v6's 6 (docs/data.md). A guess at why: the heads' targets help the vision tower
   find objects early but compete with the answers late.
7. ``vqa_readout``: the decoder alone, VQA-heavy, with the answer-attention loss: the image tokens
   hold object presence that the decoder otherwise answers near the majority answer.
The decoder is trained from scratch here (there is no pretrained LLM to keep frozen), so unlike the
paper's alignment stage, stage 1 also trains it.

A run writes ``OUT/last/`` (model, optimizer, position) every ``save_every`` steps and
``OUT/stage-<name>/`` after each stage, and resumes from ``OUT/last`` when restarted.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from eov_edge.core import slis
from eov_edge.core.errors import ConfigError
from eov_edge.core.inputs import Sample
from eov_edge.core.provenance import git_commit
from eov_edge.core.tasks import TASKS
from eov_edge.core.tokenizer import TextTokenizer
from eov_edge.model import EarthOneVisionConfig, EarthOneVisionForConditionalGeneration
from eov_edge.model.processor import EarthOneVisionProcessor, save_checkpoint
from eov_edge.training.data.examples import (
    AUX_CHANNELS,
    OBJECT_CLASSES,
    Example,
    ExampleFactory,
)
from eov_edge.training.distributed import TrainingModule, Workers, check_batch_split, shard_with_fsdp
from eov_edge.training.losses import (
    LOSS_NORMALIZATIONS,
    PointerIds,
    TrainingHeads,
    loss_totals,
    reads_attention,
)

PARAMETER_GROUPS = ("stem", "trunk", "projector", "decoder", "aux")
TASK_KINDS = tuple(TASKS)
IMAGE_POSITION_RMS = 0.5  # the projector output is ~0.24 rms at init: position a little stronger


@dataclass
class StageConfig:
    name: str
    steps: int
    task_weights: dict[str, float]
    trainable: tuple[str, ...] = PARAMETER_GROUPS
    lr: float = 1e-3
    batch_size: int = 16
    aux_weight: float = 1.0
    warmup_steps: int = 50
    # Location tokens: the target is (1 - w) one-hot + w Gaussian over neighbouring bins (sigma in
    # bins; 1000 bins over 224 px, so 10 bins ~ 2 px). A prediction one bin off is then nearly as
    # good as the exact bin, which gives every coordinate a dense gradient instead of 1-of-1000.
    loc_smoothing: float = 0.5
    pointer_weight: float = 1.0  # TrainingHeads.pointer: which image token a coordinate is about
    attention_weight: float = 1.0  # attention_loss: head 0 of these decoder layers finds the object
    attention_layers: tuple[int, ...] = (2, 3)
    loc_sigma_bins: float = 10.0
    # Which coordinates of a box the pointer and attention losses supervise (0 = x1 .. 3 = y2). Only
    # the first two: x2 and y2 follow from x1, y1 in the context plus a size prior, and a run that
    # supervised all four learned exactly those (teacher-forced correlation with the truth 0.94)
    # while the first coordinate, the one that must come from the image, stayed at chance (0.16).
    pointer_coordinates: tuple[int, ...] = (0, 1)
    token_aux_weight: float = 1.0  # TrainingHeads.token_dense on the projector output
    # answer_attention_loss: at a VQA answer, the same heads look at the asked class's objects
    answer_attention_weight: float = 1.0
    # language_loss's mean: "token" (every answer token alike), "task" (each task's tokens weighted
    # by its share of the batch's examples) or "example" (every example alike); see language_loss
    loss_normalization: str = "token"
    # cross_modal_alignment_loss: the image tokens of co-registered SAR and optical crops of one place
    # are pulled together cell by cell, against the same cell of the batch's other places
    cross_modal_align_weight: float = 0.0
    # cross_modal_match_loss: at every optical image token of a cross-modal example, head 1 of these
    # decoder layers attends to the SAR token of the same cell, and TrainingHeads.match reads from the
    # last layer's state whether the two views show the same place
    cross_modal_match_weight: float = 0.0
    match_attention_layers: tuple[int, ...] = (0, 1)
    # With a JSONL training file: only examples whose views are of these modalities (None: any); a
    # record that declares none counts as any (eov_edge.training.data.jsonl). The data folder's
    # factory picks each task's sensors itself.
    modalities: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, not {self.loss_normalization!r}")


# StageConfig overrides that switch every training-only head's loss off (the answers stage)
LANGUAGE_LOSS_ONLY = dict(aux_weight=0.0, token_aux_weight=0.0, pointer_weight=0.0, attention_weight=0.0,
                          answer_attention_weight=0.0)


@dataclass
class TrainConfig:
    preset: str = "nano"
    seed: int = 0
    stages: list[StageConfig] = field(default_factory=list)
    save_every: int = 200
    log_every: int = 25
    validate_every: int = 400  # teacher-forced validation loss per task, also after each stage
    validation_per_task: int = 4
    threads: int = 2
    hit_uav_limit: int | None = None  # for quick tests
    vision_stem: str | None = None  # EarthOneVisionConfig.vision_stem; None: the preset's
    # pretrained components (eov_edge.training.pretrained): save_pretrained folders
    init_vision: str | None = None
    init_decoder: str | None = None
    # the user's data in the held-out JSONL format (docs/evaluation.md); None: the data folder
    train_data: str | None = None
    val_data: str | None = None
    # scale-out (eov_edge.training.distributed): processes come from torchrun's environment
    fsdp: bool = False
    grad_accum: int = 1  # micro-batches per step: a stage's batch is split, the gradient summed
    bf16: bool = False  # bfloat16 autocast (FSDP: bfloat16 parameters, float32 gradient reduction)
    activation_checkpointing: bool = False  # recompute each vision and decoder layer in backward
    device: str | None = None  # "cpu" or "cuda"; None: cuda where there is one

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A config from its JSON form (what a run writes to ``OUT/last/train_config.json``)."""
        import dataclasses

        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"git_commit"})
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        stage_fields = {f.name for f in dataclasses.fields(StageConfig)}
        stages = []
        for stage in data.get("stages", []):
            bad = sorted(set(stage) - stage_fields)
            if bad:
                raise ConfigError(f"stage {stage.get('name')!r}: unknown option(s) {bad}")
            stages.append(StageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stage.items()}))
        return cls(**{**{k: v for k, v in data.items() if k in known}, "stages": stages})

    @classmethod
    def pcma(cls, preset: str = "nano", scale: float = 1.0, **kwargs) -> "TrainConfig":
        """The PCMA stages and the answers stage; ``scale`` multiplies every stage's step count."""
        def steps(n: int) -> int:
            return max(1, int(round(n * scale)))

        object_tasks = {"vqa": 2.0, "grounding": 2.0, "detection": 2.0, "caption": 1.0}
        land_tasks = {"classification": 1.0, "multilabel": 1.0, "cross_modal": 1.0}
        joint_tasks = dict(object_tasks, **land_tasks, change=1.5, temporal=1.5)
        stages = [
            StageConfig("alignment", steps(300),
                        {"vqa": 1.0, "caption": 1.0, "classification": 1.0, "grounding": 1.0}, aux_weight=2.0,
                        token_aux_weight=2.0),
            StageConfig("viewpoint", steps(700), dict(object_tasks, change=1.0, temporal=1.0)),
            StageConfig("imaging_physics", steps(400), land_tasks, trainable=("stem", "trunk", "projector", "aux")),
            # 2100 steps, not nano-v13's 2400: the read-out stage below takes their time (150-minute bar).
            StageConfig("joint", steps(2100), joint_tasks, lr=5e-4),
            # Cross-modal examples only, with their dense match supervision and the SAR/optical
            # alignment loss (InfoNCE over the ~8 same-place pairs of a batch). The stem (and its batch
            # norm) stays frozen: its statistics must not move to two modalities' alone. Without this
            # stage nano-v11 answered cross-modal below its majority answer; with the match terms mixed
            # into the answers stage instead (~3 cross-modal pairs a batch) the model learned its
            # training windows (match head 0.86 on them) but not held-out ones (0.39; docs/data.md).
            # 400 steps, not 200: the match loss leaves ln 2 in a phase transition whose step varies
            # with the weights it starts from (~125 in nano-v13, ~175 in nano-v14, whose 200-step
            # stage ended mid-transition and answered cross-modal below its baseline).
            StageConfig("sensor_matching", steps(400), {"cross_modal": 1.0}, lr=5e-4, warmup_steps=0,
                        trainable=("trunk", "projector", "decoder", "aux"), **LANGUAGE_LOSS_ONLY,
                        cross_modal_align_weight=1.0, cross_modal_match_weight=1.0),
            StageConfig("answers", steps(400), joint_tasks, lr=2.5e-4, warmup_steps=0, **LANGUAGE_LOSS_ONLY),
            # The decoder alone (stem, trunk and projector frozen: the image tokens sensor_matching
            # aligned stay as they are), VQA-heavy, with the answer-attention loss on. nano-v13's image
            # tokens held VQA presence linearly (0.83-0.85 from pooled tokens) while its decoder
            # answered it near the majority answer; this stage teaches the decoder to read it out.
            # Temporal at 4 (not 1.5): with less the stage cost temporal direction 0.71 -> 0.61.
            StageConfig("vqa_readout", steps(600), dict(joint_tasks, vqa=10.0, temporal=4.0), lr=5e-4,
                        warmup_steps=0, trainable=("decoder",), **dict(LANGUAGE_LOSS_ONLY, answer_attention_weight=1.0)),
        ]
        if kwargs.get("init_decoder"):
            # As the paper: a pretrained LLM stays frozen while the vision side aligns to it.
            stages[0] = replace(stages[0], trainable=("stem", "trunk", "projector", "aux"))
        stages[1] = replace(stages[1], modalities=("optical", "infrared"))  # aerial views: the viewpoint gap
        stages[2] = replace(stages[2], modalities=("sar", "multispectral", "optical"))  # imaging physics
        return cls(preset=preset, stages=stages, **kwargs)


def parameter_groups(model: EarthOneVisionForConditionalGeneration, aux: TrainingHeads) -> dict[str, list[nn.Parameter]]:
    encoder = model.vision_encoder
    return {
        "stem": list(encoder.embeddings.parameters()) + list(encoder.modality_embedding.parameters()),
        "trunk": list(encoder.layers.parameters()) + list(encoder.tap_norms.parameters()),
        "projector": list(model.projector.parameters()),
        "decoder": list(model.language_model.parameters()),
        "aux": list(aux.parameters()),
    }


def freeze_batch_norm(module: nn.Module) -> None:
    """BatchNorm layers (``vision_stem="conv"``) to eval mode: a stage that does not train the stem
    must not move its running statistics either (train mode would, with or without gradients)."""
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()


def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """MAE's fixed 2D sine-cosine table (grid*grid, dim): first half encodes y, second half x."""
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        angles = coord[:, None] * omega[None, :]  # (N, dim/4)
        parts += [torch.sin(angles), torch.cos(angles)]
    table = torch.cat(parts, dim=1)  # (N, dim) when dim % 4 == 0
    return torch.nn.functional.pad(table, (0, dim - table.shape[1])).float()


def smooth_bins(num_bins: int, dim: int) -> torch.Tensor:
    """(num_bins, dim) sine-cosine code of the bin index, wavelengths 4*num_bins down to 10 bins."""
    half = dim // 2
    wavelengths = torch.logspace(math.log10(4 * num_bins), 1.0, half, dtype=torch.float64)  # (dim/2,)
    angles = torch.arange(num_bins, dtype=torch.float64)[:, None] * (2 * math.pi / wavelengths)[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1])).float()


def init_for_training(model: EarthOneVisionForConditionalGeneration, tokenizer: TextTokenizer,
                      pretrained_vision: bool = False, pretrained_decoder: bool = False) -> None:
    """Structured starting points for the two maps a from-scratch model is slowest to find.

    Grounding needs "which patch holds the object" (vision positions) turned into "which location
    bin to emit" (location-token embeddings, tied with the output head). With random init both are
    unstructured, and a first run trained for 87 minutes gave the same box for every image. Here
    the ViT's learned position embeddings start as MAE's 2D sine-cosine table and the 1000
    location tokens as a sine-cosine code of their bin index, so neighbouring bins start close and
    the map from a patch's position to a coordinate is near-linear from step 0. Both stay trainable;
    the checkpoint format and the exported graphs do not change. A pretrained vision tower keeps its
    own positions; on a pretrained decoder the location code is added to the new rows' mean
    embedding (eov_edge.training.pretrained).
    """
    embeddings = model.vision_encoder.embeddings
    with torch.no_grad():
        if not pretrained_vision:
            table = embeddings.position_embedding.weight  # (N, Dv)
            grid = int(round(math.sqrt(table.shape[0])))
            code = sincos_2d(grid, table.shape[1])  # rms ~0.7
            table.copy_(code * (0.5 / code.pow(2).mean().sqrt()))
        tokens = model.get_input_embeddings().weight  # (V, Dlm), tied with the output head
        ids = torch.tensor([tokenizer.token_to_id(t) for t in slis.LOC_TOKENS])
        half = tokens.shape[1] // 2
        code = smooth_bins(len(ids), half)  # (1000, Dlm/2)
        # The same code in both halves of a location token; an image token carries its x code in
        # the first half and its y code in the second (below), so emitting "x1" or "y1" is copying
        # one half of the attended image token's position.
        loc = torch.nn.functional.pad(torch.cat([code, code], dim=1), (0, tokens.shape[1] - 2 * half))
        base = tokens[ids].mean(0) if pretrained_decoder else 0.0
        tokens[ids] = base + loc * (tokens.std() / loc.std())
        positions = model.projector.position_embedding  # (N', Dlm) or None
        if positions is not None:
            side = int(round(math.sqrt(positions.shape[0])))
            centres = [slis.quantize((i + 0.5) / side, 1.0) for i in range(side)]  # bin of each column
            rows = torch.tensor([centres[r] for r in range(side) for _ in range(side)])  # (N',)
            cols = torch.tensor([centres[c] for _ in range(side) for c in range(side)])
            grid_code = torch.cat([code[cols], code[rows]], dim=1)  # (N', 2*half): x then y
            grid_code = torch.nn.functional.pad(grid_code, (0, positions.shape[1] - 2 * half))
            positions.copy_(grid_code * (IMAGE_POSITION_RMS / grid_code.pow(2).mean().sqrt()))


def shows_one_place(example: Example) -> bool:
    """A cross-modal example whose SAR and optical views are one window (answer A)."""
    return example.task == "cross_modal" and example.target.get("answer") == "A"


def co_registered_views(examples: list[Example]) -> torch.Tensor:
    """(P,) the flat view index (over the batch's views, in order) of the SAR view of each
    cross-modal example whose two views show the same place (answer A); its optical view is next."""
    first, starts = 0, []
    for example in examples:
        if shows_one_place(example):
            starts.append(first)
        first += len(example.views)
    return torch.tensor(starts, dtype=torch.long)


def collate(examples: list[Example], processor: EarthOneVisionProcessor, grid: int) -> dict[str, torch.Tensor]:
    samples = [Sample(views=e.views, instruction=e.instruction, answer=e.answer) for e in examples]
    batch = processor(samples, with_labels=True, padding_side="right")
    targets, has = [], []
    for example in examples:
        for aux in example.aux:
            has.append(aux is not None)
            targets.append(torch.zeros(grid * grid, AUX_CHANNELS) if aux is None
                           else torch.from_numpy(aux).reshape(grid * grid, AUX_CHANNELS))
    batch["aux_targets"] = torch.stack(targets)
    batch["aux_mask"] = torch.tensor(has)
    # the object class a counting or presence question asks about (answer_attention_loss), else -1
    batch["asked_class"] = torch.tensor([OBJECT_CLASSES.index(e.target["class"])
                                         if e.task == "vqa" and e.target.get("class") in OBJECT_CLASSES else -1
                                         for e in examples])
    batch["task_index"] = torch.tensor([TASK_KINDS.index(e.task) for e in examples])  # (B,) loss_groups
    batch["co_registered_sar_views"] = co_registered_views(examples)  # (P,) cross_modal_alignment_loss
    # cross_modal_match_loss: the rows of cross-modal examples, and whether their views show one place
    rows = [i for i, e in enumerate(examples) if e.task == "cross_modal"]
    batch["cross_modal_rows"] = torch.tensor(rows, dtype=torch.long)  # (R,)
    batch["cross_modal_same"] = torch.tensor([float(shows_one_place(examples[i])) for i in rows])  # (R,)
    return batch


@torch.no_grad()
def validation_losses(model, processor, examples: list[Example], device: torch.device | None = None) -> dict[str, float]:
    """Teacher-forced language loss per task on fixed held-out examples."""
    was_training = model.training
    model.eval()
    out = {}
    for task in dict.fromkeys(e.task for e in examples):
        chosen = [e for e in examples if e.task == task]
        batch = processor([Sample(views=e.views, instruction=e.instruction, answer=e.answer) for e in chosen],
                          with_labels=True, padding_side="right")
        batch = {k: v.to(device or "cpu") for k, v in batch.items()}
        # embedded outside forward, as in training_step: under FSDP, forward would re-shard the token
        # embeddings its nested merge_image_embeds call gathered before the decoder reads them
        inputs_embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"], batch["modality_ids"])
        loss = model(inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        out[task] = round(loss.item(), 4)
    model.train(was_training)
    return out


def _lr_factor(step: int, stage: StageConfig) -> float:
    if step < stage.warmup_steps:
        return (step + 1) / stage.warmup_steps
    progress = (step - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def step_examples(source, stage: StageConfig, tasks: list[str], seed: int, step: int,
                  indices: list[int]) -> list[Example]:
    """Examples ``indices`` of a step's global batch. Each is drawn from its own seed (seed, stage,
    step, index), so a process draws its share without the others' and a resumed run replays the
    same batches, whatever the number of processes."""
    weights = [stage.task_weights[t] for t in tasks]
    out = []
    for index in indices:
        rng = random.Random(f"{seed}-{stage.name}-{step}-{index}")
        task = rng.choices(tasks, weights)[0]
        out.append(source.sample(task, rng, stage.modalities))
    return out


def build_model(config: TrainConfig) -> tuple[EarthOneVisionForConditionalGeneration, EarthOneVisionProcessor]:
    """The model a run starts from (seeded: every process builds the same one)."""
    torch.manual_seed(config.seed)
    if config.init_vision or config.init_decoder:
        from eov_edge.training.pretrained import from_components

        if config.vision_stem == "conv" and config.init_vision:
            raise ConfigError("--vision-stem conv cannot start from a pretrained vision tower (its patch embedding "
                              "is one convolution); leave --vision-stem out")
        model, processor = from_components(config.preset, config.init_vision, config.init_decoder, config.seed)
    else:
        model_config = EarthOneVisionConfig.from_preset(
            config.preset, **({"vision_stem": config.vision_stem} if config.vision_stem else {}))
        model = EarthOneVisionForConditionalGeneration(model_config)
        processor = EarthOneVisionProcessor(TextTokenizer.from_file(), model_config)
    init_for_training(model, processor.tokenizer, pretrained_vision=bool(config.init_vision),
                      pretrained_decoder=bool(config.init_decoder))
    return model, processor


# TrainConfig fields a resumed run must share with the run it resumes
SAME_ON_RESUME = ("preset", "vision_stem", "init_vision", "init_decoder", "seed")


def _check_resumable(out: Path, config: TrainConfig) -> None:
    saved_file = out / "last" / "train_config.json"
    if (out / "last" / "trainer.pt").is_file():
        raise ConfigError(f"{out} holds a run saved by an earlier eov-train (last/trainer.pt), which resumes "
                          "with that version only; start this one with another --out")
    saved = json.loads(saved_file.read_text())
    for key in SAME_ON_RESUME:
        if saved.get(key) != getattr(config, key):
            if key == "vision_stem":
                stem = saved.get(key) or EarthOneVisionConfig.from_preset(saved["preset"]).vision_stem
                now = config.vision_stem or EarthOneVisionConfig.from_preset(config.preset).vision_stem
                if stem == now:
                    continue
                raise ConfigError(f"{out} holds a run with vision_stem={stem!r}, not {now!r}; resume it with the "
                                  "same options or use another --out")
            raise ConfigError(f"{out} holds a run with {key}={saved.get(key)!r}, not {getattr(config, key)!r}; "
                              "resume it with the same options or use another --out")


def _training_state(module: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(module)}
    if optimizer is not None:
        state["optimizer"] = get_optimizer_state_dict(module, optimizer)
    return state


def _save_state(out: Path, module: nn.Module, optimizer, stage_index: int, step: int, config: TrainConfig,
                log: list[dict], commit: str | None, workers: Workers) -> None:
    """``OUT/last``: the model, heads and optimizer state (torch.distributed.checkpoint: each process
    writes its shards; any number of processes reads them back) and the run's position."""
    import torch.distributed.checkpoint as dcp

    tmp = out / "last.tmp"
    if workers.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    workers.barrier()
    with warnings.catch_warnings():  # one process: DCP warns that it assumes one process
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(_training_state(module, optimizer), checkpoint_id=str(tmp / "state"), no_dist=not workers.distributed)
    if workers.is_main:
        (tmp / "position.json").write_text(json.dumps({"stage_index": stage_index, "step": step,
                                                       "world_size": workers.world_size}))
        (tmp / "train_config.json").write_text(json.dumps(dict(asdict(config), git_commit=commit), indent=1))
        (tmp / "log.json").write_text(json.dumps(log))
        shutil.rmtree(out / "last", ignore_errors=True)
        os.replace(tmp, out / "last")
    workers.barrier()


def _load_state(out: Path, module: nn.Module, optimizer, workers: Workers) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = _training_state(module, optimizer)
    # Partial: AdamW keeps no moments for a parameter that has had no gradient yet (a head whose loss
    # is off); such a parameter starts without them after the resumption too.
    with warnings.catch_warnings():  # one process: DCP warns that it assumes one process
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(out / "last" / "state"),
                 planner=DefaultLoadPlanner(allow_partial_load=True), no_dist=not workers.distributed)
    set_model_state_dict(module, state["model"])
    if optimizer is not None:
        set_optimizer_state_dict(module, optimizer, state["optimizer"])


def _save_model(path: Path, module: TrainingModule, processor, config: TrainConfig, workers: Workers) -> None:
    """The model alone as a checkpoint folder (safetensors), written by the main process; under FSDP
    its shards are gathered first (every process takes part)."""
    model = module.model
    if config.fsdp and workers.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if workers.is_main:
            whole = EarthOneVisionForConditionalGeneration(model.config)
            whole.load_state_dict(full)
            save_checkpoint(whole.eval(), processor, path)
    elif workers.is_main:
        was_training = model.training
        save_checkpoint(model.eval(), processor, path)
        model.train(was_training)
    workers.barrier()


def training_sources(config: TrainConfig, data_root: Path | None, image_size: int, patch_size: int):
    """(train, val) example sources: the user's JSONL files, or the data folder's factory."""
    if config.train_data:
        from eov_edge.training.data.jsonl import JsonlExamples

        train_source = JsonlExamples(config.train_data, image_size)
        val_source = JsonlExamples(config.val_data, image_size) if config.val_data else None
        return train_source, val_source
    if data_root is None or not Path(data_root).is_dir():
        raise ConfigError(f"no training data: give a JSONL file (--train-data) or the data folder (--data); "
                          f"{data_root} not found")
    return (ExampleFactory(data_root, "train", image_size, patch_size, hit_uav_limit=config.hit_uav_limit),
            ExampleFactory(data_root, "val", image_size, patch_size, hit_uav_limit=config.hit_uav_limit))


def stage_tasks(stage: StageConfig, source) -> list[str]:
    """The stage's tasks the source has examples of (all of them for the data folder)."""
    available = source.tasks_for(stage.modalities)
    return [t for t in stage.task_weights if t in available]


def train(config: TrainConfig, out: Path, data_root: Path | None = None, progress: bool = True,
          workers: Workers | None = None) -> Path:
    """Run (or resume) every stage; returns the final checkpoint folder ``OUT/final``.

    Under torchrun every process calls this; they share each step's global batch (distributed.py).
    """
    from contextlib import nullcontext

    from tqdm import tqdm

    workers = workers or Workers.from_environment(config.device)
    out = Path(out)
    if workers.is_main:
        out.mkdir(parents=True, exist_ok=True)
    workers.barrier()
    commit = git_commit()  # the code this process runs, even if the tree moves on while it trains
    torch.set_num_threads(config.threads)
    if config.grad_accum < 1:
        raise ConfigError(f"--grad-accum must be at least 1, got {config.grad_accum}")
    for stage in config.stages:
        check_batch_split(stage.batch_size, workers, config.grad_accum)
    if config.fsdp and not workers.distributed:
        raise ConfigError("--fsdp shards over several processes; start the run with torchrun --nproc-per-node N")
    resume = out / "last"
    resuming = (resume / "position.json").is_file() or (resume / "trainer.pt").is_file()
    if resuming:
        _check_resumable(out, config)
    model, processor = build_model(config)
    model_config = model.config
    depth = model_config.text_config.num_hidden_layers
    for stage in config.stages:
        for field_name in ("attention_layers", "match_attention_layers"):
            if any(not 0 <= layer < depth for layer in getattr(stage, field_name)):
                raise ConfigError(f"stage {stage.name}: {field_name} {getattr(stage, field_name)} but the decoder has "
                                  f"{depth} layers; choose layers below {depth} in a --config file")
    heads = TrainingHeads(model_config.multi_level_dim, model_config.text_config.hidden_size,
                          model_config.image_tokens_per_view)
    loc_ids = [processor.tokenizer.token_to_id(t) for t in slis.LOC_TOKENS]
    if loc_ids != list(range(loc_ids[0], loc_ids[0] + len(loc_ids))):
        raise ValueError("the tokenizer's location tokens must have consecutive ids (language_loss slices them)")
    pointer_ids = PointerIds.from_tokenizer(processor.tokenizer, model_config.image_token_id)
    start_stage, start_step, log = 0, 0, []
    if resuming:
        position = json.loads((resume / "position.json").read_text())
        start_stage, start_step = position["stage_index"], position["step"]
        log = json.loads((resume / "log.json").read_text())
        where = (f"stage {config.stages[start_stage].name}, step {start_step}"
                 if start_stage < len(config.stages) else "the end: every stage is done")
        if workers.is_main:
            print(f"resuming {out} at {where} (saved by {position.get('world_size', 1)} process(es), "
                  f"resumed by {workers.world_size})")
    if any(reads_attention(stage) for stage in config.stages):
        # attention_loss and answer_attention_loss read the decoder's softmax weights, which only
        # eager attention returns (not saved with the checkpoint: loading gives sdpa again).
        model.language_model.set_attn_implementation("eager")
    if config.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if workers.distributed and workers.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the conv stem's statistics over the global batch
    module = TrainingModule(model, heads).to(workers.device)
    if config.fsdp:
        shard_with_fsdp(module, workers, config.bf16)
    grid = model_config.grid_size
    train_source, val_source = training_sources(config, data_root, model_config.image_size,
                                                model_config.vision_config.patch_size)
    val_rng = random.Random(f"{config.seed}-validation")
    val_examples = []
    if val_source is not None:
        val_tasks = [t for t in dict.fromkeys(t for st in config.stages for t in st.task_weights)
                     if t in val_source.tasks_for(None)]
        val_examples = [val_source.sample(task, val_rng) for task in val_tasks for _ in range(config.validation_per_task)]
    if resuming and start_stage > 0 and (start_stage >= len(config.stages) or start_step == 0):
        _load_state(out, module, None, workers)  # a stage boundary: the weights; the next stage starts its own optimizer
    # wall time counts across resumptions: the model card reports the whole run's
    started = time.time() - max((e.get("elapsed_s", 0.0) for e in log), default=0.0)
    autocast = (torch.autocast(workers.device.type, dtype=torch.bfloat16) if config.bf16 and not config.fsdp
                else nullcontext())
    for stage_index in range(start_stage, len(config.stages)):
        stage = config.stages[stage_index]
        tasks = stage_tasks(stage, train_source)
        if not tasks:
            if workers.is_main:
                print(f"stage {stage.name}: the training data has none of its tasks {sorted(stage.task_weights)}"
                      f"{' in ' + '/'.join(stage.modalities) + ' views' if stage.modalities else ''}; skipped")
            continue
        groups = parameter_groups(model, heads)
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name in stage.trainable)
        trainable = [p for name in stage.trainable for p in groups[name]]
        wrapped = module
        if workers.distributed and not config.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            # Rewrapped per stage: DDP reduces the gradients of the parameters that train when it is built.
            # find_unused_parameters: a head whose loss is off in a stage gets no gradient.
            wrapped = DistributedDataParallel(module, find_unused_parameters=True, gradient_as_bucket_view=True)
        optimizer = torch.optim.AdamW(trainable, lr=stage.lr, weight_decay=0.01, betas=(0.9, 0.98))
        first = start_step if stage_index == start_stage else 0
        if resuming and stage_index == start_stage and first:
            _load_state(out, module, optimizer, workers)
        model.train()
        if "stem" not in stage.trainable:
            freeze_batch_norm(model.vision_encoder)
        share = list(range(workers.rank, stage.batch_size, workers.world_size))  # this process's examples
        micro = [share[m::config.grad_accum] for m in range(config.grad_accum)]
        bar = tqdm(range(first, stage.steps), desc=stage.name, disable=not (progress and workers.is_main),
                   mininterval=5)
        for step in bar:
            batches = [collate(step_examples(train_source, stage, tasks, config.seed, step, indices), processor, grid)
                       for indices in micro]
            batches = [{k: v.to(workers.device) for k, v in b.items()} for b in batches]
            totals = loss_totals(batches, stage.loss_normalization,
                                 workers.all_reduce if workers.distributed else None)
            for group in optimizer.param_groups:
                group["lr"] = stage.lr * _lr_factor(step, stage)
            sums: dict[str, float] = {}
            for m, batch in enumerate(batches):
                sync = (wrapped.no_sync() if wrapped is not module and m < len(batches) - 1 else nullcontext())
                with sync:
                    with autocast:
                        loss, parts = wrapped(batch, stage, pointer_ids, totals[m], 1.0 / config.grad_accum)
                    # DDP and FSDP average the processes' gradients; the parts are shares of a sum
                    (loss * workers.world_size).backward()
                # lm: a share of the global loss; the heads' parts and terms: a part of a mean over processes
                for name, value in dict(parts, heads_total=loss.item() - parts["lm"]).items():
                    sums[name] = sums.get(name, 0.0) + (value if name in ("lm", "heads_total") else value / config.grad_accum)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step % config.log_every == 0 or step == stage.steps - 1:
                names = sorted(sums)
                reduced = workers.all_reduce(torch.tensor([sums[n] for n in names], dtype=torch.float64))
                parts = {n: float(v) if n == "lm" else float(v) / workers.world_size for n, v in zip(names, reduced)}
                loss_value = parts["lm"] + parts.pop("heads_total")
                log.append({"stage": stage.name, "step": step, "loss": loss_value, **parts,
                            "elapsed_s": round(time.time() - started, 1)})
                bar.set_postfix({name: f"{value:.3f}" for name, value in parts.items()})
            if (step + 1) % config.validate_every == 0 and val_examples:
                log.append({"stage": stage.name, "step": step,
                            "val_loss": validation_losses(model, processor, val_examples, workers.device)})
            if (step + 1) % config.save_every == 0:
                _save_state(out, module, optimizer, stage_index, step + 1, config, log, commit, workers)
        log.append({"stage": stage.name, "step": stage.steps, "elapsed_s": round(time.time() - started, 1),
                    **({"val_loss": validation_losses(model, processor, val_examples, workers.device)}
                       if val_examples else {})})
        _save_model(out / f"stage-{stage.name}", module, processor, config, workers)
        _save_state(out, module, None, stage_index + 1, 0, config, log, commit, workers)
    final = out / "final"
    _save_model(final, module, processor, config, workers)
    if workers.is_main:
        (final / "train_log.json").write_text(json.dumps(log))
    workers.barrier()
    return final
