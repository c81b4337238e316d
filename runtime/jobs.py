"""eov-run's questions about images, as library calls: IMAGE arguments read once, answered as asked.

    job = ImageJob(("t0.tif", "t1.tif"), tasks=(resolve_task("change"),))
    results = answer_images(pipeline, job)               # [ImageResult(label, question, answer)]
    write_geojson("changes.geojson", job, results, views)

What the job holds decides how it is asked: several tasks (and a prompt) about one sample (its views
encoded once, :meth:`Pipeline.answer_questions`); one question about all images as one sample (a
task that needs several views, or ``multiview``); or one question about each image, as one batch.
Tiled scenes are :func:`eov_edge.runtime.scene.run_scene`'s, folders of scenes
:func:`eov_edge.runtime.scene_runs.run_scenes`'. Faces (eov-run) print what these return and turn
:class:`EOVError` into their own errors; they decide nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Sequence

from eov_edge.core.answer import Answer
from eov_edge.core.errors import PromptError
from eov_edge.core.raster import View, view_sources
from eov_edge.core.tasks import TaskSpec, answer_token_budget
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.options import ReadOptions
from eov_edge.runtime.pipeline import Pipeline


@dataclass(frozen=True)
class ImageJob:
    """Questions about ``images`` (IMAGE arguments: a raster, a folder of band files, band files
    joined with commas): ``tasks`` and/or ``prompt``, how to read the images and how to decode."""

    images: tuple[str, ...]
    tasks: tuple[TaskSpec, ...] = ()
    prompt: str | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    generation: GenerationConfig | None = None  # None: greedy, the tasks' answer budget
    multiview: bool = False  # all images are views of one sample

    def __post_init__(self) -> None:
        if not self.images:
            raise PromptError("give at least one image")
        if not self.tasks and self.prompt is None:
            raise PromptError("give a task or a prompt")
        if self.generation is None:
            object.__setattr__(self, "generation", GenerationConfig(max_new_tokens=answer_token_budget(self.tasks)))

    @property
    def together(self) -> bool:
        """Whether all images are views of one sample (else each image is asked on its own)."""
        return self.multiview or len(self.tasks) > 1 or any(t.min_views > 1 for t in self.tasks)

    @property
    def task_name(self) -> str | None:
        """The one task asked, by name (None with several, or a prompt alone)."""
        return self.tasks[0].name if len(self.tasks) == 1 else None

    @property
    def label(self) -> str:
        return " + ".join(self.images)


@dataclass
class ImageResult:
    """One answer: to which images (one, or several joined with " + "), to what question (a task's
    name or the prompt)."""

    images: str
    question: str
    answer: Answer

    def to_dict(self) -> dict:
        return {"images": self.images, "question": self.question, **self.answer.to_dict()}


def read_images(pipeline: Pipeline, job: ImageJob) -> list[View]:
    """Each of the job's images as one view on the model's canvas."""
    return [job.read.read(pipeline, view_sources(image)) for image in job.images]


def answer_images(pipeline: Pipeline, job: ImageJob, views: Sequence[View] | None = None) -> list[ImageResult]:
    """Answer ``job`` (``views``: its images, already read)."""
    views = list(views) if views is not None else read_images(pipeline, job)
    if len(job.tasks) > 1:
        questions = [(t, None) for t in job.tasks] + ([(None, job.prompt)] if job.prompt else [])
        answers = pipeline.answer_questions(views, questions, job.generation)
        return [ImageResult(job.label, task.name if task else text, answer)
                for (task, text), answer in zip(questions, answers)]
    task = job.tasks[0] if job.tasks else None
    question = job.prompt or task.name
    if job.together:
        return [ImageResult(job.label, question, a) for a in pipeline.answer(views, task, job.prompt, job.generation)]
    answers = pipeline.answer_each(views, task, job.prompt, job.generation)
    return [ImageResult(image, question, a) for image, a in zip(job.images, answers)]


def stream_answer(pipeline: Pipeline, job: ImageJob,
                  views: Sequence[View] | None = None) -> Generator[str, None, Answer]:
    """The answer's text piece by piece as it is generated (:meth:`Pipeline.stream`): one question
    about one sample."""
    if len(job.tasks) > 1:
        raise PromptError("streaming answers one question: give one task, or a prompt")
    if len(job.images) > 1 and not job.together:
        raise PromptError("streaming answers one sample: give one image, or --multiview")
    views = list(views) if views is not None else read_images(pipeline, job)
    return pipeline.stream(views, job.tasks[0] if job.tasks else None, job.prompt, job.generation)


def results_report(job: ImageJob, results: Sequence[ImageResult]) -> dict:
    """The results as eov-run --json prints them."""
    return {"task": job.task_name, "tasks": [t.name for t in job.tasks],
            "results": [r.to_dict() for r in results]}


def write_geojson(path: str | Path, job: ImageJob, results: Sequence[ImageResult], views: Sequence[View],
                  output_crs: str = "wgs84") -> None:
    """The results' shapes as one FeatureCollection (on the map where the views share a CRS),
    written whole or not at all."""
    from eov_edge.core.paths import write_json_atomic
    from eov_edge.runtime.geo import answers_geojson

    properties = {"task": job.task_name, "images": list(job.images)}
    write_json_atomic(path, answers_geojson([r.answer for r in results], views, properties, output_crs))
