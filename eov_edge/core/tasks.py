"""The nine task kinds: names, instruction templates, answer formats and metrics.

Shared by the tokenizer corpus, training data and the device runtime (which builds prompts with
the same templates), so it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

TaskKind = Literal[
    "classification", "multilabel", "caption", "vqa", "grounding", "detection", "change",
    "temporal", "cross_modal",
]  # fmt: skip


# New-token budgets: a spatial answer holds up to 12 labelled boxes (80 tokens in the shipped held-out
# pack's longest detection, 6-7 per box) and its end token; text answers are a sentence at most.
SPATIAL_ANSWER_TOKENS = 96
TEXT_ANSWER_TOKENS = 32


@dataclass(frozen=True)
class TaskSpec:
    """One task kind: everything the training data, the runtime's faces and evaluation need to know
    about it. Faces turn a name the user typed into one of these once (:func:`resolve_task`) and hand
    it down."""

    name: TaskKind
    templates: tuple[str, ...]  # instruction templates; {cls} is a class phrase where present
    answer_format: str
    metric: str  # what evaluation reports, in words
    # the score that decides whether a model beats its image-blind baseline (eov-eval) and that
    # reports show first
    headline_metric: str
    # the question the shipped model was trained with (docs/data.md); used when a user gives a task
    # and no prompt, by the demo and by export's whole-pipeline parity check on calib_data
    default_question: str
    aliases: tuple[str, ...] = ()  # other names users type (eov-run --task, held-out files, requests)
    spatial: bool = False  # answers carry SLIS shapes (boxes, quads, polygons, points)
    min_views: int = 1

    @property
    def answer_tokens(self) -> int:
        """The default new-token budget of an answer."""
        return SPATIAL_ANSWER_TOKENS if self.spatial else TEXT_ANSWER_TOKENS


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("classification",
                 ("What kind of scene is this?", "Classify this scene.",
                  "Which land-use class does this image show?"),
                 "one class name", "accuracy", "accuracy", "What kind of scene is this?", aliases=("classify",)),
        TaskSpec("multilabel",
                 ("List all land-cover classes present.", "Which land-cover classes appear here?"),
                 "class names separated by '; '", "sample recall and F1", "f1",
                 "List all land-cover classes present."),
        TaskSpec("caption",
                 ("Describe the image.", "Write a short caption for this image."),
                 "one sentence", "BLEU-4 / CIDEr-D", "cider_d", "Describe the image.", aliases=("describe",)),
        TaskSpec("vqa",
                 ("How many {cls} are there?", "Is there a {cls} in the image?",
                  "Count the {cls}."),
                 "a number, or yes/no", "exact match", "accuracy", "How many cars are there?", aliases=("count",)),
        TaskSpec("grounding",
                 ("Where is the largest {cls}?", "Locate the {cls}.", "Give the box of the {cls}."),
                 "one SLIS shape", "P@0.5 and mean IoU", "mean_iou", "Where is the largest car?",
                 aliases=("ground",), spatial=True),
        TaskSpec("detection",
                 ("Detect all {cls}.", "Find every object and give its box."),
                 "label + SLIS box per object, ', ' separated, or 'none'", "F1 at IoU 0.5", "f1",
                 "Detect all objects.", aliases=("detect",), spatial=True),
        TaskSpec("change",
                 ("Has anything changed between the two images?", "Mark what changed."),
                 "'no', or 'yes' followed by SLIS boxes of the changes", "accuracy and box F1", "accuracy",
                 "Has anything changed between the two images?", spatial=True, min_views=2),
        TaskSpec("temporal",
                 ("Which direction does the {cls} move?", "Track the {cls} across the frames."),
                 "a compass direction, or one SLIS box per frame with view tags",
                 "accuracy / track P@0.5", "direction_accuracy", "Which direction does the car move?",
                 aliases=("track",), spatial=True, min_views=2),
        TaskSpec("cross_modal",
                 ("Which statement is true? {options}", "Answer with the letter: {options}"),
                 "one option letter", "MCQ accuracy", "accuracy",
                 "Do the SAR and multispectral views show the same place? A) yes B) no", min_views=2),
    )
}  # fmt: skip

# Views of the registry, by task kind name, for code that needs one property of every task.
TASK_ALIASES = {alias: spec.name for spec in TASKS.values() for alias in spec.aliases}
SPATIAL_TASKS = tuple(name for name, spec in TASKS.items() if spec.spatial)
HEADLINE_METRICS = {name: spec.headline_metric for name, spec in TASKS.items()}
DEFAULT_QUESTIONS = {name: spec.default_question for name, spec in TASKS.items()}


def answer_token_budget(tasks: Iterable[TaskSpec]) -> int:
    """New tokens to allow for answers to ``tasks`` asked together (none: a free-form question)."""
    return max((task.answer_tokens for task in tasks), default=TEXT_ANSWER_TOKENS)


def resolve_task(task: str | TaskSpec) -> TaskSpec:
    """The task kind a user named (its name or an alias); :class:`PromptError` naming the choices
    otherwise. A :class:`TaskSpec` is returned as it is."""
    from eov_edge.core.errors import PromptError

    if isinstance(task, TaskSpec):
        return task
    spec = TASKS.get(TASK_ALIASES.get(task, task))
    if spec is None:
        raise PromptError(f"unknown task {task!r}; choose one of {', '.join(TASKS)} "
                          f"(or {', '.join(TASK_ALIASES)})")
    return spec


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
