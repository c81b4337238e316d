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
from dataclasses import asdict, dataclass, field
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
from eov_edge.training.losses import (
    LOSS_NORMALIZATIONS,
    PointerIds,
    TrainingHeads,
    reads_attention,
    training_step,
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


def init_for_training(model: EarthOneVisionForConditionalGeneration, tokenizer: TextTokenizer) -> None:
    """Structured starting points for the two maps a from-scratch model is slowest to find.

    Grounding needs "which patch holds the object" (vision positions) turned into "which location
    bin to emit" (location-token embeddings, tied with the output head). With random init both are
    unstructured, and a first run trained for 87 minutes gave the same box for every image. Here
    the ViT's learned position embeddings start as MAE's 2D sine-cosine table and the 1000
    location tokens as a sine-cosine code of their bin index, so neighbouring bins start close and
    the map from a patch's position to a coordinate is near-linear from step 0. Both stay trainable;
    the checkpoint format and the exported graphs do not change.
    """
    embeddings = model.vision_encoder.embeddings
    with torch.no_grad():
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
        tokens[ids] = loc * (tokens.std() / loc.std())
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
    batch["asked_class"] = torch.tensor([OBJECT_CLASSES.index(e.target["class"]) if e.task == "vqa" else -1
                                         for e in examples])
    batch["task_index"] = torch.tensor([TASK_KINDS.index(e.task) for e in examples])  # (B,) loss_groups
    batch["co_registered_sar_views"] = co_registered_views(examples)  # (P,) cross_modal_alignment_loss
    # cross_modal_match_loss: the rows of cross-modal examples, and whether their views show one place
    rows = [i for i, e in enumerate(examples) if e.task == "cross_modal"]
    batch["cross_modal_rows"] = torch.tensor(rows, dtype=torch.long)  # (R,)
    batch["cross_modal_same"] = torch.tensor([float(shows_one_place(examples[i])) for i in rows])  # (R,)
    return batch


@torch.no_grad()
def validation_losses(model, processor, examples: list[Example]) -> dict[str, float]:
    """Teacher-forced language loss per task on fixed held-out examples."""
    was_training = model.training
    model.eval()
    out = {}
    for task in dict.fromkeys(e.task for e in examples):
        chosen = [e for e in examples if e.task == task]
        batch = processor([Sample(views=e.views, instruction=e.instruction, answer=e.answer) for e in chosen],
                          with_labels=True, padding_side="right")
        out[task] = round(model(**batch).loss.item(), 4)
    model.train(was_training)
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """``optimizer.load_state_dict(saved)``, also for a state saved mid-stage before
    ``TrainingHeads.match`` existed: that head's parameters are the last of the stage's trainable list
    (the "aux" group comes last, the match head last in it) and start without moments."""
    saved_params = saved["param_groups"][0]["params"]
    now = len(optimizer.param_groups[0]["params"])
    if len(saved["param_groups"]) == 1 and len(saved_params) < now:
        saved = {**saved, "param_groups": [{**saved["param_groups"][0], "params": list(range(now))}]}
    optimizer.load_state_dict(saved)


def _lr_factor(step: int, stage: StageConfig) -> float:
    if step < stage.warmup_steps:
        return (step + 1) / stage.warmup_steps
    progress = (step - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_state(out: Path, model, processor, aux_head, optimizer, stage_index: int, step: int, config: TrainConfig,
                log: list[dict], commit: str | None) -> None:
    tmp = out / "last.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, processor, tmp / "model")
    torch.save({"aux": aux_head.state_dict(), "optimizer": optimizer.state_dict(),
                "stage_index": stage_index, "step": step}, tmp / "trainer.pt")
    (tmp / "train_config.json").write_text(json.dumps(dict(asdict(config), git_commit=commit), indent=1))
    (tmp / "log.json").write_text(json.dumps(log))
    shutil.rmtree(out / "last", ignore_errors=True)
    os.replace(tmp, out / "last")


def train(config: TrainConfig, out: Path, data_root: Path, progress: bool = True) -> Path:
    """Run (or resume) every stage; returns the final checkpoint folder ``OUT/final``."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    commit = git_commit()  # the code this process runs, even if the tree moves on while it trains
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model_config = EarthOneVisionConfig.from_preset(
        config.preset, **({"vision_stem": config.vision_stem} if config.vision_stem else {}))
    model = EarthOneVisionForConditionalGeneration(model_config)
    processor = EarthOneVisionProcessor(TextTokenizer.from_file(), model_config)
    aux_head = TrainingHeads(model_config.multi_level_dim, model_config.text_config.hidden_size,
                             model_config.image_tokens_per_view)
    init_for_training(model, processor.tokenizer)
    loc_ids = [processor.tokenizer.token_to_id(t) for t in slis.LOC_TOKENS]
    if loc_ids != list(range(loc_ids[0], loc_ids[0] + len(loc_ids))):
        raise ValueError("the tokenizer's location tokens must have consecutive ids (language_loss slices them)")
    pointer_ids = PointerIds.from_tokenizer(processor.tokenizer, model_config.image_token_id)
    start_stage, start_step, log, state = 0, 0, [], None
    resume = out / "last"
    if (resume / "trainer.pt").is_file():
        state = torch.load(resume / "trainer.pt", weights_only=False)
        model = EarthOneVisionForConditionalGeneration.from_pretrained(resume / "model")
        if model.config.vision_stem != model_config.vision_stem:
            raise ConfigError(f"{out} holds a run with vision_stem={model.config.vision_stem!r}, not "
                             f"{model_config.vision_stem!r}; resume it with the same options or use another --out")
        missing, unexpected = aux_head.load_state_dict(state["aux"], strict=False)
        if unexpected or any(not key.startswith("match.") for key in missing):
            raise ConfigError(f"{resume / 'trainer.pt'} holds training heads of another shape "
                              f"(missing {missing}, unexpected {unexpected}); use another --out")
        start_stage, start_step = state["stage_index"], state["step"]
        log = json.loads((resume / "log.json").read_text())
        where = (f"stage {config.stages[start_stage].name}, step {start_step}"
                 if start_stage < len(config.stages) else "the end: every stage is done")
        print(f"resuming {out} at {where}")
    if any(reads_attention(stage) for stage in config.stages):
        # attention_loss and answer_attention_loss read the decoder's softmax weights, which only
        # eager attention returns (not saved with the checkpoint: loading gives sdpa again).
        model.language_model.set_attn_implementation("eager")
    grid = model_config.grid_size
    factory = ExampleFactory(data_root, "train", model_config.image_size, model_config.vision_config.patch_size,
                             hit_uav_limit=config.hit_uav_limit)
    val_factory = ExampleFactory(data_root, "val", model_config.image_size, model_config.vision_config.patch_size,
                                 hit_uav_limit=config.hit_uav_limit)
    val_rng = random.Random(f"{config.seed}-validation")
    val_examples = [val_factory.sample(task, val_rng) for task in
                    dict.fromkeys(t for st in config.stages for t in st.task_weights)
                    for _ in range(config.validation_per_task)]
    # wall time counts across resumptions: the model card reports the whole run's
    started = time.time() - max((e.get("elapsed_s", 0.0) for e in log), default=0.0)
    for stage_index in range(start_stage, len(config.stages)):
        stage = config.stages[stage_index]
        groups = parameter_groups(model, aux_head)
        for name, params in groups.items():
            for p in params:
                p.requires_grad_(name in stage.trainable)
        trainable = [p for name in stage.trainable for p in groups[name]]
        optimizer = torch.optim.AdamW(trainable, lr=stage.lr, weight_decay=0.01, betas=(0.9, 0.98))
        first = start_step if stage_index == start_stage else 0
        if first and state is not None:
            load_optimizer_state(optimizer, state["optimizer"])
        tasks = list(stage.task_weights)
        weights = [stage.task_weights[t] for t in tasks]
        model.train()
        if "stem" not in stage.trainable:
            freeze_batch_norm(model.vision_encoder)
        bar = tqdm(range(first, stage.steps), desc=stage.name, disable=not progress, mininterval=5)
        for step in bar:
            # Each step's data depends only on (seed, stage, step): resuming replays the same batches.
            rng = random.Random(f"{config.seed}-{stage.name}-{step}")
            examples = [factory.sample(rng.choices(tasks, weights)[0], rng) for _ in range(stage.batch_size)]
            batch = collate(examples, processor, grid)
            for group in optimizer.param_groups:
                group["lr"] = stage.lr * _lr_factor(step, stage)
            loss, parts = training_step(model, aux_head, batch, stage, pointer_ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            if step % config.log_every == 0 or step == stage.steps - 1:
                log.append({"stage": stage.name, "step": step, "loss": loss.item(), **parts,
                            "elapsed_s": round(time.time() - started, 1)})
                bar.set_postfix({name: f"{value:.3f}" for name, value in parts.items()})
            if (step + 1) % config.validate_every == 0:
                log.append({"stage": stage.name, "step": step, "val_loss": validation_losses(model, processor, val_examples)})
            if (step + 1) % config.save_every == 0:
                _save_state(out, model, processor, aux_head, optimizer, stage_index, step + 1, config, log, commit)
        log.append({"stage": stage.name, "step": stage.steps, "val_loss": validation_losses(model, processor, val_examples),
                    "elapsed_s": round(time.time() - started, 1)})
        model.eval()
        save_checkpoint(model, processor, out / f"stage-{stage.name}")
        _save_state(out, model, processor, aux_head, optimizer, stage_index + 1, 0, config, log, commit)
    final = out / "final"
    save_checkpoint(model, processor, final)
    (final / "train_log.json").write_text(json.dumps(log))
    return final
