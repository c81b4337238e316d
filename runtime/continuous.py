"""Continuous batching over ONNX Runtime's fused CPU decoder: answers join the running batch at the
next decode step and leave it when they end, each at its own length.

A request batch decoded as one (:meth:`Pipeline.answer_samples`) runs until its longest answer ends:
a request arriving a step after it started waits for all of it, and rows that ended early keep
being computed. Server engines (vLLM, SGLang, TensorRT-LLM's in-flight batching) schedule per step
instead. The fused CPU decoder (``decoder_kind`` "ort-cpu", :mod:`eov_edge.runtime.kv_stream`) makes
that natural here: its KV buffers hold each row at its own length (``seqlens_k``), so a row can be
prefilled while the others wait between two steps, and a freed row taken by the next request.

:class:`ContinuousBatch` holds ``slots`` rows of ``max_context`` positions each (the KV memory is
allocated once: ``slots`` x the model's context). Rows are taken lowest first and each decode step
runs the rows up to the highest one in use (one bound call per width), so a lone request decodes at
batch 1. A request joining is prefilled alone (batch 1, as answering alone): its views' embeddings
and its image block's keys and values come from the pipeline's prefix cache where an earlier request
left them (same content hash), else they are computed and left there. Each row has its own token
rule (greedy or seeded sampling, its own budget), so requests with different settings share steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eov_edge.core import manifest as mf
from eov_edge.core.tasks import TaskSpec
from eov_edge.runtime.kv_stream import LAST_POSITION, FusedKVStream
from eov_edge.runtime.prefix_cache import prefix_kv_key
from eov_edge.runtime.token_choice import GenerationConfig, token_rule


@dataclass
class Admission:
    """A question to answer in the running batch: its sample (views and prompt), task and decoding
    settings; ``views_key``: the views' content hash (the prefix cache's key); ``owner``: the
    caller's object, handed back with every event."""

    sample: Any
    task: TaskSpec | None
    generation: GenerationConfig
    views_key: str
    owner: Any = None


@dataclass
class Row:
    """One answer in progress: its admission, token rule, and the tokens chosen so far."""

    admission: Admission
    rule: Any
    ids: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    ended: bool = False  # EOS chosen
    shown: str = ""  # the text already streamed

    @property
    def finished(self) -> bool:
        return self.ended or len(self.ids) >= self.admission.generation.max_new_tokens


@dataclass
class Event:
    """What a step did for one answer: ``token`` chosen (None when it was refused at admission),
    ``answer`` (a :class:`~eov_edge.core.answer.Answer`) once it ended, ``error`` when it could
    not be answered."""

    owner: Any
    row: Row | None
    token: int | None = None
    answer: Any = None
    error: BaseException | None = None


class ContinuousBatch:
    """Up to ``slots`` answers decoding together over ``pipeline``'s fused CPU decoder."""

    def __init__(self, pipeline, slots: int) -> None:
        reason = unsupported_reason(pipeline)
        if reason:
            raise ValueError(f"continuous batching needs the fused CPU decoder: {reason}")
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        m = pipeline.manifest
        self.pipeline = pipeline
        self.slots = slots
        self.stream = FusedKVStream(pipeline.decoder, slots, m.max_context)
        vocab = len(pipeline.embed_table)
        self.logits = np.empty((slots, 1, vocab), np.float32)  # (slots, 1, V): each row's last logits
        # (slots, 1) i64: each row's argmax (the graph's next_tokens), then the next step's input_ids
        self.tokens = np.zeros((slots, 1), np.int64)
        self.rows: list[Row | None] = [None] * slots
        self._calls: dict[int, Any] = {}  # width -> bound decode call over rows 0..width-1
        self._eos, self._pad = m.special_tokens["eos"], m.special_tokens["pad"]
        self.steps = 0  # decode steps run
        self.last_width = 0  # rows the last step ran (up to the highest in use)
        self.step_rows = 0  # rows those steps carried (in use)

    @property
    def nbytes(self) -> int:
        return self.stream.nbytes

    @property
    def running(self) -> int:
        return sum(row is not None for row in self.rows)

    @property
    def free(self) -> int:
        return self.slots - self.running

    # -- joining -----------------------------------------------------------------------------
    def admit(self, admissions: list[Admission]) -> list[Event]:
        """Prefill each admission into a free row (at most :attr:`free` of them) and choose its first
        token. Views not in the prefix cache are encoded together, in one call. An admission that
        fails gets an error event and takes no row."""
        if len(admissions) > self.free:
            raise ValueError(f"{len(admissions)} admissions for {self.free} free rows")
        pipeline = self.pipeline
        events: list[Event] = []
        inputs = []
        for admission in admissions:
            try:
                inputs.append(pipeline.batch([admission.sample], admission.generation.max_new_tokens))
            except Exception as err:  # noqa: BLE001 - the request's own error, the batch goes on
                events.append(Event(admission.owner, None, error=err))
                inputs.append(None)
        ready = [(a, i) for a, i in zip(admissions, inputs) if i is not None]
        if not ready:
            return events
        try:
            views = pipeline.encode_views([a.views_key for a, _ in ready], lambda k: ready[k][1])
        except Exception as err:  # noqa: BLE001 - encoding the new views failed: those requests fail
            return events + [Event(a.owner, None, error=err) for a, _ in ready]
        for (admission, batch), embeds in zip(ready, views):
            try:
                events.append(self._join(admission, batch, embeds))
            except Exception as err:  # noqa: BLE001
                events.append(Event(admission.owner, None, error=err))
        return events

    def _join(self, admission: Admission, batch: dict[str, np.ndarray], views_embeds: np.ndarray) -> Event:
        pipeline = self.pipeline
        row = self.rows.index(None)
        length = int(batch["attention_mask"].sum())  # the prompt's tokens (a lone row has no padding to drop)
        embeds = pipeline.prompt_embeds(batch["input_ids"], views_embeds)[:, -length:]  # (1, S, D)
        prefix_ids = pipeline.image_block_prefix(batch)
        prefix, cached, key = 0, None, None
        if prefix_ids is not None:
            # the image block: its keys and values from the prefix cache, or fed now and kept there
            prefix, key = len(prefix_ids), prefix_kv_key(admission.views_key, prefix_ids)
            cached = pipeline.prefix_cache.get(key)
        computed = self.stream.prefill_row(row, embeds, self.logits[row:row + 1], self.tokens[row:row + 1],
                                           prefix, cached)
        if computed is not None:
            pipeline.prefix_cache.put(key, computed, computed.nbytes)
        state = Row(admission, token_rule(1, self.logits.shape[-1], admission.generation, self._eos, self._pad))
        self.rows[row] = state
        return self._choose(row, state)

    # -- stepping ----------------------------------------------------------------------------
    def step(self) -> list[Event]:
        """One decode step for every row in use: each row's next token (and its answer if it ended)."""
        width = max(r for r, row in enumerate(self.rows) if row is not None) + 1
        seqlens = self.stream.seqlens
        for r in range(width):
            if self.rows[r] is not None:
                seqlens[r] += 1  # the fed token's position; a free row inside the width stays put
        self.stream.total[...] = int(seqlens[:width].max()) + 1
        if width not in self._calls:
            self._calls[width] = self._bind(width)
        self._calls[width]()
        self.last_width = width
        self.steps += 1
        self.step_rows += self.running
        return [self._choose(r, row) for r, row in enumerate(self.rows[:width]) if row is not None]

    def _bind(self, width: int):
        """The decode call over rows 0..width-1: their token ids in (gathered by the graph), their
        keys and values written at their own lengths, logits and argmax out (into the token ids)."""
        tokens = self.tokens[:width]
        return self.stream.bind(tokens, self.logits[:width], LAST_POSITION, next_tokens=tokens, rows=width)

    def _choose(self, r: int, row: Row) -> Event:
        step = row.rule.choose(len(row.ids), self.logits[r], [int(self.tokens[r, 0])])
        token = row.rule.chosen[0]
        self.tokens[r, 0] = token  # the next step's input (the rule may override the argmax)
        row.ids.append(token)
        row.probs.append(float(step.probs[0]))
        row.ended = token == self._eos
        event = Event(row.admission.owner, row, token)
        if row.finished:
            event.answer = self._finish(r, row)
        return event

    def _finish(self, r: int, row: Row):
        self.release(r)
        return self.pipeline.make_answer(row.admission.sample, np.array(row.ids), np.array(row.probs, np.float32),
                                         row.admission.task)

    def release(self, r: int) -> None:
        """Free row ``r`` (its answer ended, or its client left): the next admission may take it."""
        self.rows[r] = None
        self.stream.seqlens[r] = 0

    def release_owner(self, owner: Any) -> bool:
        for r, row in enumerate(self.rows):
            if row is not None and row.admission.owner is owner:
                self.release(r)
                return True
        return False


def unsupported_reason(pipeline) -> str | None:
    """Why ``pipeline`` cannot decode continuously (None when it can): the fused CPU decoder is the
    one whose rows each keep their own length; a speculative or llama.cpp decoder decodes one answer."""
    from eov_edge.runtime.generation import Decoder

    if pipeline.manifest.decoder_kind != mf.ORT_CPU_DECODER:
        return "the artifacts carry the portable decoder; export with eov-export onnx --decoder ort-cpu"
    if type(pipeline.decoder) is not Decoder:
        return "a speculative decoder answers one request at a time"
    if pipeline.decoder.llama is not None:
        return "llama.cpp decodes one answer at a time"
    return None
