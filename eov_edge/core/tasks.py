"""The nine task kinds: names, instruction templates, answer formats and metrics.

Shared by the tokenizer corpus, training data and the device runtime (which builds prompts with
the same templates), so it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskKind = Literal[
    "classification", "multilabel", "caption", "vqa", "grounding", "detection", "change",
    "temporal", "cross_modal",
]  # fmt: skip


@dataclass(frozen=True)
class TaskSpec:
    name: TaskKind
    templates: tuple[str, ...]  # instruction templates; {cls} is a class phrase where present
    answer_format: str
    metric: str
    min_views: int = 1


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("classification",
                 ("What kind of scene is this?", "Classify this scene.",
                  "Which land-use class does this image show?"),
                 "one class name", "accuracy"),
        TaskSpec("multilabel",
                 ("List all land-cover classes present.", "Which land-cover classes appear here?"),
                 "class names separated by '; '", "sample recall and F1"),
        TaskSpec("caption",
                 ("Describe the image.", "Write a short caption for this image."),
                 "one sentence", "BLEU-4 / CIDEr-D"),
        TaskSpec("vqa",
                 ("How many {cls} are there?", "Is there a {cls} in the image?",
                  "Count the {cls}."),
                 "a number, or yes/no", "exact match"),
        TaskSpec("grounding",
                 ("Where is the largest {cls}?", "Locate the {cls}.", "Give the box of the {cls}."),
                 "one SLIS shape", "P@0.5 and mean IoU"),
        TaskSpec("detection",
                 ("Detect all {cls}.", "Find every object and give its box."),
                 "label + SLIS box per object, ', ' separated, or 'none'", "F1 at IoU 0.5"),
        TaskSpec("change",
                 ("Has anything changed between the two images?", "Mark what changed."),
                 "'no', or 'yes' followed by SLIS boxes of the changes", "accuracy and box F1",
                 min_views=2),
        TaskSpec("temporal",
                 ("Which direction does the {cls} move?", "Track the {cls} across the frames."),
                 "a compass direction, or one SLIS box per frame with view tags",
                 "accuracy / track P@0.5", min_views=2),
        TaskSpec("cross_modal",
                 ("Which statement is true? {options}", "Answer with the letter: {options}"),
                 "one option letter", "MCQ accuracy", min_views=2),
    )
}  # fmt: skip

# The metric that decides, per task, whether a model beats its image-blind baseline (eov-eval) and
# what the reports show first.
HEADLINE_METRICS: dict[str, str] = {
    "classification": "accuracy", "multilabel": "f1", "caption": "cider_d", "vqa": "accuracy",
    "grounding": "mean_iou", "detection": "f1", "change": "accuracy", "temporal": "direction_accuracy",
    "cross_modal": "accuracy",
}

# Names users type for a task kind (eov-run --task, held-out files).
TASK_ALIASES = {"detect": "detection", "classify": "classification", "ground": "grounding",
                "count": "vqa", "describe": "caption", "track": "temporal"}
# Task kinds whose answers carry SLIS shapes (boxes, quads, polygons, points).
SPATIAL_TASKS = ("grounding", "detection", "change", "temporal")
# New-token budgets: a spatial answer holds up to 12 labelled boxes (80 tokens in the shipped held-out
# pack's longest detection, 6-7 per box) and its end token; text answers are a sentence at most.
SPATIAL_ANSWER_TOKENS = 96
TEXT_ANSWER_TOKENS = 32


def answer_token_budget(tasks) -> int:
    """New tokens to allow for answers to ``tasks`` (task kinds) asked together."""
    return SPATIAL_ANSWER_TOKENS if set(tasks) & set(SPATIAL_TASKS) else TEXT_ANSWER_TOKENS


def resolve_task(task: str) -> str:
    """A task kind from its name or alias; :class:`PromptError` naming the choices otherwise."""
    from eov_edge.core.errors import PromptError

    name = TASK_ALIASES.get(task, task)
    if name not in TASKS:
        raise PromptError(f"unknown task {task!r}; choose one of {', '.join(TASKS)} "
                          f"(or {', '.join(TASK_ALIASES)})")
    return name


HIT_UAV_CLASSES = ("person", "car", "bicycle", "other vehicle")
SAR_CLASSES = ("ship",)
EUROSAT_CLASSES = (
    "annual crop", "forest", "herbaceous vegetation", "highway", "industrial", "pasture",
    "permanent crop", "residential", "river", "sea or lake",
)
UC_MERCED_CLASSES = (
    "agricultural", "airplane", "baseball diamond", "beach", "buildings", "chaparral",
    "dense residential", "forest", "freeway", "golf course", "harbor", "intersection",
    "medium residential", "mobile home park", "overpass", "parking lot", "river", "runway",
    "sparse residential", "storage tanks", "tennis court",
)
# BigEarthNet's 43-class CORINE nomenclature, spelled as in its *_labels_metadata.json.
CORINE_43_CLASSES = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports",
    "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
    "Sport and leisure facilities", "Non-irrigated arable land", "Permanently irrigated land",
    "Rice fields", "Vineyards", "Fruit trees and berry plantations", "Olive groves", "Pastures",
    "Annual crops associated with permanent crops", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland", "Moors and heathland", "Sclerophyllous vegetation",
    "Transitional woodland/shrub", "Beaches, dunes, sands", "Bare rock",
    "Sparsely vegetated areas", "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes",
    "Salines", "Intertidal flats", "Water courses", "Water bodies", "Coastal lagoons",
    "Estuaries", "Sea and ocean",
)
DIRECTIONS = ("north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west")

# The question per task kind that the shipped model was trained with (docs/data.md); used by the
# demo and by export's whole-pipeline parity check on calib_data.
DEFAULT_QUESTIONS: dict[str, str] = {
    "classification": "What kind of scene is this?",
    "multilabel": "List all land-cover classes present.",
    "caption": "Describe the image.",
    "vqa": "How many cars are there?",
    "grounding": "Where is the largest car?",
    "detection": "Detect all objects.",
    "change": "Has anything changed between the two images?",
    "temporal": "Which direction does the car move?",
    "cross_modal": "Do the SAR and multispectral views show the same place? A) yes B) no",
}
