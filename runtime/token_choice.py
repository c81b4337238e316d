"""How a decode loop chooses its tokens: the generation settings, and one rule object per
generation (:func:`token_rule`) that every loop (the portable and ONNX Runtime CPU decoders, the
speculative check) asks for each step's tokens. Greedy is the hot path: it runs right after each
decode step, so it keeps per-row state in Python lists and touches the (B, V) logits only where a
rule overrides the argmax or a probability is asked for."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from eov_edge.core.slis_grammar import CLOSE_IDS, LOC_END, LOC_FIRST, SlisGrammar


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick tokens: greedy by default; ``do_sample`` draws with a seeded generator."""

    max_new_tokens: int = 64
    # EOS cannot be chosen before this many tokens (transformers' ``min_new_tokens``: its logit is
    # set to -inf), so benchmarks time a fixed number of steps and stay comparable token for token.
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: the whole vocabulary
    seed: int = 0
    # Mask tokens that would break a spatial answer's SLIS grammar (eov_edge.core.slis_grammar), as
    # PyTorch generate() does by default; reported probabilities are then those of the constrained
    # distribution. Off only to compare with a decoder loop that has no such rule (ORT GenAI).
    slis_grammar: bool = True
    # With the grammar: a location token is the mean bin of the model's distribution, not its
    # argmax (eov_edge.core.slis_grammar), as PyTorch generate() does by default.
    expected_locations: bool = True
    # Each chosen token's probability (``Step.probs``; the runtime's detection scores). Off, the
    # greedy loop skips the softmax denominator (an exp over the vocabulary per step) and ``probs``
    # is NaN: what a loop that reports no scores does (transformers' output_scores=False, ORT GenAI).
    output_scores: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")


@dataclass
class Step:
    """One decoding step of a batch: the chosen ids (B,) and their probabilities (B,)."""

    index: int
    token_ids: np.ndarray
    probs: np.ndarray  # NaN where GenerationConfig.output_scores is off
    finished: np.ndarray  # (B,) bool, after this step


def chosen_token_probs(logits: np.ndarray, ids: np.ndarray, out: np.ndarray | None = None,
                       excluded: int | np.ndarray | None = None) -> np.ndarray:
    """Each row's probability of its chosen token under the model (temperature 1), (B,) float64:
    1 / sum(exp(l - l_chosen)) over logits (B, V); float32 exponentials, float64 sum (no (B, V)
    float64 copy; plain indexing, not take_along_axis, which costs ~30 us a step building its
    indices). ``out``: a (B, V) float32 scratch written instead of allocating; ``excluded``: token
    ids (one, or an array) left out of the sum (EOS before min_new_tokens, what the SLIS grammar
    forbids) without copying ``logits`` to mask them."""
    shifted = np.subtract(logits, logits[np.arange(len(ids)), ids][:, None], out=out)  # (B, V)
    if excluded is not None:
        shifted[:, excluded] = -np.inf
    return 1.0 / np.exp(shifted, out=shifted).sum(-1, dtype=np.float64)


def softmax_last(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float64 (probabilities reported as scores)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class GreedyRule:
    """How a greedy loop picks each step's tokens (B rows) from logits (B, V): the argmax, EOS
    masked before ``min_new_tokens``, the SLIS grammar (with expected locations), finished rows
    padded; each pick's probability unless ``scores`` is off. One object per generation: it holds
    the rows' state (finished, grammar). The plain loop and the speculative check
    (:mod:`eov_edge.runtime.speculative`) both choose through it, so they choose alike."""

    def __init__(self, batch: int, vocab: int, config: GenerationConfig, eos: int, pad: int,
                 scores: bool | None = None) -> None:
        self.min_new_tokens = config.min_new_tokens
        self.eos, self.pad = eos, pad
        self.scores = config.output_scores if scores is None else scores
        self.finished = [False] * batch
        self.scratch = np.empty((batch, vocab), np.float32)  # (B, V), reused every step
        self.grammar = SlisGrammar(batch, config.expected_locations) if config.slis_grammar else None
        self.chosen: list[int] = []  # the last step's tokens
        self.no_scores = np.full(batch, np.nan)  # every step's probs without scores (read-only, shared)
        self.no_scores.flags.writeable = False

    @property
    def done(self) -> bool:
        return False not in self.finished

    def choose(self, index: int, logits: np.ndarray, argmax: list[int] | None = None) -> Step:
        """Step ``index``'s tokens from ``logits`` (B, V) (read, never written); advances the state.
        ``argmax``: each row's argmax of ``logits`` where the graph took it (``next_tokens``); the
        logits are then read only where a rule overrides it or ``scores`` asks for probabilities."""
        masked = index < self.min_new_tokens  # EOS may not be chosen yet
        if self.grammar is None:
            chosen, probs = _greedy_choice(logits, masked, self.eos, self.scratch, self.scores, argmax)
        else:
            chosen, probs = _greedy_grammar_choice(logits, masked, self.eos, self.finished, self.grammar,
                                                   self.scratch, self.scores, argmax)
        if True in self.finished:
            chosen = [self.pad if done else token for token, done in zip(chosen, self.finished)]
        if self.grammar is not None:
            self.grammar.advance(chosen)
        self.finished = [done or token == self.eos for token, done in zip(chosen, self.finished)]
        self.chosen = chosen
        return Step(index, np.array(chosen, np.int64), self.no_scores if probs is None else probs,
                    np.array(self.finished))

    def fork(self) -> "GreedyRule":
        """A copy that goes its own way from here (a draft's proposals) and scores nothing. The
        scratch buffer is shared: the two choose in turn, and no pick reads it after returning."""
        other = copy.copy(self)
        other.finished = list(self.finished)
        other.grammar = copy.deepcopy(self.grammar)
        other.scores = False
        return other


class SamplingRule:
    """:class:`GreedyRule`'s interface for sampling (``do_sample``): each row's token drawn from the
    model's distribution at ``temperature`` (within its ``top_k``), with a generator seeded by
    ``seed``; EOS masked before ``min_new_tokens``, the SLIS grammar, finished rows padded. The
    reported probability is the model's own (temperature 1) over the legal tokens; a location
    chosen as the distribution's mean bin reports the grammar's mass around it."""

    def __init__(self, batch: int, vocab: int, config: GenerationConfig, eos: int, pad: int) -> None:
        self.config = config
        self.eos, self.pad = eos, pad
        self.rng = np.random.default_rng(config.seed)
        self.finished = np.zeros(batch, bool)
        self.grammar = SlisGrammar(batch, config.expected_locations) if config.slis_grammar else None
        self.chosen: list[int] = []

    @property
    def done(self) -> bool:
        return bool(self.finished.all())

    def choose(self, index: int, logits: np.ndarray, argmax: list[int] | None = None) -> Step:
        """Step ``index``'s tokens from ``logits`` (B, V) (read, never written); ``argmax`` unused."""
        config, grammar = self.config, self.grammar
        logits = logits.copy()  # the runner's output buffer stays as the model wrote it
        if index < config.min_new_tokens:
            logits[:, self.eos] = -np.inf
        if grammar is not None:
            grammar.constrain(logits, np.flatnonzero(~self.finished).tolist())
        probs = softmax_last(logits)  # (B, V) the model's own distribution (temperature 1)
        scaled = logits.astype(np.float64) / config.temperature
        if config.top_k:
            kth = np.sort(scaled, axis=-1)[:, -min(config.top_k, scaled.shape[-1])][:, None]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        sampling = softmax_last(scaled)
        ids = np.array([self.rng.choice(len(row), p=row) for row in sampling], np.int64)
        probs = probs[np.arange(len(ids)), ids]
        if grammar is not None and grammar.location_mass:
            rows = list(grammar.location_mass)
            probs[rows] = [grammar.location_mass[r] for r in rows]
        ids = np.where(self.finished, self.pad, ids)
        if grammar is not None:
            grammar.advance(ids.tolist())
        self.finished |= ids == self.eos
        self.chosen = ids.tolist()
        if not config.output_scores:
            probs[:] = np.nan
        return Step(index, ids, probs, self.finished.copy())


def token_rule(batch: int, vocab: int, config: GenerationConfig, eos: int, pad: int) -> GreedyRule | SamplingRule:
    """The rule every decode loop chooses its tokens by: :class:`SamplingRule` when sampling, else
    :class:`GreedyRule`."""
    if config.do_sample:
        return SamplingRule(batch, vocab, config, eos, pad)
    return GreedyRule(batch, vocab, config, eos, pad)


def stack_steps(steps: Iterator[Step]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (B, T) and probabilities (B, T) of a decoder's steps."""
    steps = list(steps)
    return np.stack([s.token_ids for s in steps], 1), np.stack([s.probs for s in steps], 1)


def _greedy_choice(logits: np.ndarray, masked: bool, eos: int, scratch: np.ndarray, scores: bool,
                   argmax: list[int] | None = None) -> tuple[list[int], np.ndarray | None]:
    """Greedy ids (a list of B) and their probabilities (B,) (None without ``scores``) from logits
    (B, V), EOS excluded when ``masked``; the runner's buffer is read, never written (``scratch``
    is). ``argmax``: the rows' argmax, already taken (the graph's ``next_tokens``)."""
    chosen = logits.argmax(-1).tolist() if argmax is None else argmax
    source = logits
    if masked and eos in chosen:
        np.copyto(scratch, logits)
        scratch[:, eos] = -np.inf
        chosen = scratch.argmax(-1).tolist()
        source = scratch
    if not scores:
        return chosen, None
    return chosen, chosen_token_probs(source, np.array(chosen, np.int64), out=scratch,
                                      excluded=eos if masked else None)


_CLOSE_TOKEN_SET = frozenset(CLOSE_IDS.values())
# what the grammar forbids outside any shape: every location token and every closing tag
_ILLEGAL_OUTSIDE = np.r_[LOC_FIRST:LOC_END, sorted(_CLOSE_TOKEN_SET)].astype(np.int64)


def _greedy_grammar_choice(logits: np.ndarray, masked: bool, eos: int, finished: list[bool],
                           grammar: SlisGrammar, scratch: np.ndarray, scores: bool,
                           argmax: list[int] | None = None) -> tuple[list[int], np.ndarray | None]:
    """:func:`_greedy_choice` under the SLIS grammar, without copying the logits of a row whose
    argmax the grammar allows (most steps: text outside any shape). Its probability is then the
    one over the legal tokens (the illegal ones, and EOS when ``masked``, excluded from the sum), as
    the sampling rule computes it on its masked copy. A row inside a shape, or whose
    argmax is illegal, is masked row by row (copy, ``SlisGrammar.constrain``, argmax;
    a location's probability is the grammar's ``location_mass``). Rows already finished are not
    constrained (as there). ``argmax``: as for :func:`_greedy_choice` (not modified)."""
    chosen = logits.argmax(-1).tolist() if argmax is None else list(argmax)
    probs = np.full(len(chosen), np.nan) if scores else None
    illegal = (np.append(_ILLEGAL_OUTSIDE, eos) if masked else _ILLEGAL_OUTSIDE) if scores else None
    for row, token in enumerate(chosen):
        rows = slice(row, row + 1)
        if finished[row]:  # padding from here on; its probability as the sampling rule reports it
            if scores:
                probs[row] = chosen_token_probs(logits[rows], np.array([token]), out=scratch[rows])[0]
            continue
        if grammar.open_kind[row] is None and not (LOC_FIRST <= token < LOC_END or token in _CLOSE_TOKEN_SET
                                                   or (masked and token == eos)):
            if scores:  # the legal argmax: no copy of the row
                probs[row] = chosen_token_probs(logits[rows], np.array([token]), out=scratch[rows],
                                                excluded=illegal)[0]
            continue
        line = scratch[row]  # (V,) a view
        np.copyto(line, logits[row])
        if masked:
            line[eos] = -np.inf
        grammar.constrain(scratch, [row])
        token = chosen[row] = int(line.argmax())
        if not scores:
            continue
        if row in grammar.location_mass:
            probs[row] = grammar.location_mass[row]
        else:
            probs[row] = chosen_token_probs(scratch[rows], np.array([token]), out=scratch[rows])[0]
    return chosen, probs
