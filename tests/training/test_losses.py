"""The training losses: each term against a case worked by hand, and the registry's step."""

import pytest
import torch

from eov_edge.training.data.examples import AUX_CHANNELS, OBJECT_CLASSES
from eov_edge.training.losses import (
    aux_loss,
    language_loss,
    loss_groups,
)
from eov_edge.training.train import StageConfig, TrainConfig


def test_aux_loss_picks_object_or_land_cover_per_view():
    logits = torch.zeros(3, 4, AUX_CHANNELS)
    targets = torch.zeros(3, 4, AUX_CHANNELS)
    k = 2 * len(OBJECT_CLASSES)
    targets[1, :, k] = 1.0  # land-cover view: all water
    has = torch.tensor([True, True, False])
    loss = aux_loss(logits, targets, has)
    # object view: BCE of logit 0 on all-negative targets = log 2; land view: CE of uniform = log 4
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item() + torch.log(torch.tensor(4.0)).item(),
                                        rel=1e-5)
    assert aux_loss(logits, targets, torch.tensor([False, False, False])).item() == 0.0


def test_language_loss_without_smoothing_is_transformers_causal_lm_loss():
    from transformers.loss.loss_utils import ForCausalLMLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 6, 40)
    labels = torch.tensor([[-100, 3, 20, 21, 25, -100], [-100, -100, 5, 22, 7, 1]])
    ours = language_loss(logits, labels, loc_first=20, num_loc=10, smoothing=0.0, sigma_bins=2.0)
    assert ours.item() == pytest.approx(ForCausalLMLoss(logits, labels, 40).item(), rel=1e-6)


def test_grouped_language_loss_weighs_groups_by_examples_not_tokens():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 40)
    # row 0 supervises one token (a "yes"), rows 1 and 2 five and two tokens
    labels = torch.tensor([[-100, -100, -100, -100, 7, -100], [-100, 3, 9, 21, 25, 1], [-100, -100, -100, 4, 2, -100]])
    nll = -torch.log_softmax(logits[:, :-1], dim=-1)  # (B, S-1, V) predicts labels[:, 1:]
    tokens = [torch.stack([nll[r, p - 1, labels[r, p]] for p in range(1, 6) if labels[r, p] != -100]) for r in range(3)]
    per_token = language_loss(logits, labels, loc_first=20, num_loc=10, smoothing=0.0, sigma_bins=2.0)
    assert per_token.item() == pytest.approx((torch.cat(tokens).sum() / 8).item(), rel=1e-5)
    per_example = language_loss(logits, labels, 20, 10, 0.0, 2.0, row_groups=torch.arange(3))
    assert per_example.item() == pytest.approx(sum(t.mean() for t in tokens).item() / 3, rel=1e-5)
    # rows 0 and 2 one task, row 1 another: 2/3 x the first task's token mean + 1/3 x the second's
    per_task = language_loss(logits, labels, 20, 10, 0.0, 2.0, row_groups=torch.tensor([4, 1, 4]))
    first = torch.cat([tokens[0], tokens[2]]).mean()
    assert per_task.item() == pytest.approx((2 / 3 * first + 1 / 3 * tokens[1].mean()).item(), rel=1e-5)
    # a row with nothing supervised takes no share; smoothing applies per token before the means
    empty = torch.cat([labels, torch.full((1, 6), -100)])
    four = torch.randn(4, 6, 40)
    four[:3] = logits
    assert language_loss(four, empty, 20, 10, 0.5, 2.0, row_groups=torch.tensor([4, 1, 4, 0])).item() == pytest.approx(
        language_loss(logits, labels, 20, 10, 0.5, 2.0, row_groups=torch.tensor([4, 1, 4])).item(), rel=1e-6)


def test_loss_groups_follow_the_stage_normalization():
    batch = {"task_index": torch.tensor([2, 0, 2])}
    assert loss_groups(batch, "token") is None
    assert loss_groups(batch, "task").tolist() == [2, 0, 2]
    assert loss_groups(batch, "example").tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="loss_normalization"):
        StageConfig("joint", 1, {"vqa": 1.0}, loss_normalization="sequence")


def test_smoothed_location_loss_prefers_a_near_miss_to_a_far_one():
    # One supervised location token (bin 50 of 100); the model puts its mass on bin 52 or on bin 90.
    labels = torch.tensor([[-100, 10 + 50]])
    near, far = torch.full((1, 2, 120), -20.0), torch.full((1, 2, 120), -20.0)
    near[0, 0, 10 + 52] = 10.0
    far[0, 0, 10 + 90] = 10.0

    def loss(logits, smoothing):
        return language_loss(logits, labels, loc_first=10, num_loc=100, smoothing=smoothing, sigma_bins=5.0).item()

    assert loss(near, 0.0) == pytest.approx(loss(far, 0.0))  # plain cross-entropy: a miss is a miss
    assert loss(near, 0.5) < loss(far, 0.5) - 0.5
    # a text token is unaffected by the smoothing
    text = torch.tensor([[-100, 3]])
    logits = torch.randn(1, 2, 120)
    assert language_loss(logits, text, 10, 100, 0.5, 5.0).item() == pytest.approx(
        language_loss(logits, text, 10, 100, 0.0, 5.0).item())


def test_pointer_targets_name_the_cell_of_each_box_centre():
    from eov_edge.core import slis
    from eov_edge.core.tokenizer import TextTokenizer
    from eov_edge.training.losses import PointerIds, pointer_targets

    tokenizer = TextTokenizer.from_file()
    ids = PointerIds.from_tokenizer(tokenizer, image_token_id=4)
    # two boxes: centre (x 150, y 850) bins -> cell row 5, col 1 of 7; centre (900, 50) -> row 0, col 6
    answer = slis.serialize([slis.SpatialObject("box", (100, 800, 200, 900)),
                             slis.SpatialObject("box", (850, 0, 950, 100), view=1)])
    answer_ids = tokenizer.encode(answer)
    prompt = [5, 6, 7]
    labels = torch.tensor([[-100] * len(prompt) + answer_ids, [-100] * (len(prompt) + len(answer_ids))])
    queries, targets, views = pointer_targets(labels, ids, tokens_per_view=49)
    assert targets == [5 * 7 + 1] * 4 + [0 * 7 + 6] * 4
    assert views == [0] * 4 + [1] * 4  # the second box carries <t1>
    assert all(row == 0 for row, _ in queries)  # the second row has no answer
    loc_positions = [p for p, t in enumerate(labels[0].tolist()) if ids.loc_first <= t < ids.loc_first + 1000]
    assert [p for _, p in queries] == [p - 1 for p in loc_positions]  # the states that predict them
    assert pointer_targets(torch.full((1, 5), -100), ids, 49) == ([], [], [])
    # only the first two coordinates of each box: the states before x1 and y1
    first_two, cells, _ = pointer_targets(labels, ids, tokens_per_view=49, coordinates=(0, 1))
    assert [p for _, p in first_two] == [p - 1 for p in loc_positions[0:2] + loc_positions[4:6]]
    assert cells == [5 * 7 + 1] * 2 + [0 * 7 + 6] * 2


def test_pool_to_tokens_follows_the_projector_merge_order():
    from eov_edge.model import EarthOneVisionConfig
    from eov_edge.model.modeling import FeatureProjector
    from eov_edge.training.losses import pool_to_tokens

    k = 2 * len(OBJECT_CLASSES)
    grid, merge = 4, 2
    targets = torch.zeros(1, grid * grid, AUX_CHANNELS)
    targets[0, 1 * grid + 3, 0] = 1.0  # an object centre in patch (row 1, col 3): merged token (0, 1)
    targets[0, :, k] = torch.arange(grid * grid, dtype=torch.float32)  # land channel: the patch index
    projector = FeatureProjector(EarthOneVisionConfig.from_preset("nano"))
    projector.grid_size, projector.merge_size = grid, merge
    pooled = pool_to_tokens(targets, projector)  # (1, 4, AUX)
    assert pooled[0, :, 0].tolist() == [0.0, 1.0, 0.0, 0.0]
    # the projector's own merge puts the same patches in each token
    merged = projector.merge_tokens(targets[..., k : k + 1])  # (1, 4, 4): the 4 patch indices per token
    assert pooled[0, :, k].tolist() == merged[0].mean(-1).tolist()
    assert merged[0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]


def test_pointer_loss_trains_the_head_towards_the_target_cell():
    from eov_edge.training.losses import PointerIds, TrainingHeads, pointer_loss

    torch.manual_seed(0)
    ids = PointerIds(image=4, box_open=10, loc_first=20, view_first=1200)
    labels = torch.tensor([[-100, -100, 10, 20 + 100, 20 + 800, 20 + 200, 20 + 900, 11]])  # cell (5, 1)
    hidden = torch.randn(1, 8, 16)
    heads = TrainingHeads(feature_dim=8, text_width=16, tokens_per_view=49)
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.5)
    first = pointer_loss(heads, hidden, labels, ids, 49)
    for _ in range(30):
        loss = pointer_loss(heads, hidden, labels, ids, 49)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first.item() / 4
    predicted = heads.pointer(hidden[0, 2:6]).argmax(-1)  # the states before the 4 location tokens
    assert predicted.tolist() == [36] * 4


def test_attention_loss_reads_the_weight_on_the_box_centre_token_of_its_view():
    from eov_edge.training.losses import PointerIds, attention_loss

    ids = PointerIds(image=4, box_open=10, loc_first=20, view_first=1200)
    tokens_per_view = 4  # a 2x2 grid of image tokens per view
    # two views: image tokens at 0-3 and 4-7; the answer names view 1, box centre in cell (1, 0)
    input_ids = torch.tensor([[4, 4, 4, 4, 4, 4, 4, 4, 7, 1201, 10, 20 + 100, 20 + 600, 20 + 300, 20 + 900, 11]])
    labels = torch.full_like(input_ids, -100)
    labels[0, 9:] = input_ids[0, 9:]
    seq = input_ids.shape[1]
    uniform = torch.full((1, 2, seq, seq), 1.0 / seq)
    focused = torch.zeros(1, 2, seq, seq)
    focused[0, 0, :, 4 + 2] = 1.0  # head 0 looks at view 1's cell 2 from everywhere
    focused[0, 1] = 1.0 / seq
    loss = attention_loss((uniform, focused), input_ids, labels, ids, tokens_per_view, layers=(1,))
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    loss = attention_loss((uniform, focused), input_ids, labels, ids, tokens_per_view, layers=(0,))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(float(seq))).item(), rel=1e-4)
    wrong_view = torch.zeros(1, 2, seq, seq)
    wrong_view[0, 0, :, 2] = 1.0  # the same cell in view 0
    assert attention_loss((wrong_view,), input_ids, labels, ids, tokens_per_view, layers=(0,)).item() > 10


def test_answer_attention_loss_spreads_over_the_asked_class_centres_of_the_rows_own_view():
    from eov_edge.training.losses import answer_attention_loss

    image = 4
    tokens_per_view = 4
    # row 0: one view (tokens 0-3), asks about class 1; row 1: one view, asks nothing
    input_ids = torch.tensor([[4, 4, 4, 4, 7, 8, 9, 30], [4, 4, 4, 4, 7, 8, 9, 31]])
    labels = torch.full_like(input_ids, -100)
    labels[:, 7] = input_ids[:, 7]  # the answer token; it is predicted from position 6
    targets = torch.zeros(2, tokens_per_view, AUX_CHANNELS)
    targets[0, 1, 2 * 1] = 1.0  # class 1 centres in cells 1 and 3 of row 0's view
    targets[0, 3, 2 * 1] = 1.0
    targets[0, 2, 2 * 0] = 1.0  # a class-0 object: not asked about
    targets[1, 0, 2 * 1] = 1.0  # row 1's view: not asked about
    seq = input_ids.shape[1]
    spread = torch.zeros(2, 2, seq, seq)
    spread[0, 0, 6, [1, 3]] = 0.5
    asked = torch.tensor([1, -1])
    loss = answer_attention_loss((spread,), input_ids, labels, asked, targets, image, layers=(0,))
    assert loss.item() == pytest.approx(-torch.log(torch.tensor(0.5)).item(), rel=1e-4)
    wrong = torch.zeros(2, 2, seq, seq)
    wrong[0, 0, 6, 2] = 1.0  # all on the class-0 object
    assert answer_attention_loss((wrong,), input_ids, labels, asked, targets, image, layers=(0,)).item() > 10
    # no asked class with an object in view: no term
    none_asked = torch.tensor([-1, -1])
    assert answer_attention_loss((wrong,), input_ids, labels, none_asked, targets, image, layers=(0,)).item() == 0.0
    absent = torch.tensor([2, -1])
    assert answer_attention_loss((wrong,), input_ids, labels, absent, targets, image, layers=(0,)).item() == 0.0


def test_answer_attention_loss_finds_the_view_of_a_later_row():
    from eov_edge.training.losses import answer_attention_loss

    # row 0 has two views (8 image tokens), row 1 one view: row 1's targets are view index 2
    input_ids = torch.tensor([[4] * 8 + [7, 30], [4] * 4 + [7, 8, 9, 8, 9, 31]])
    labels = torch.full_like(input_ids, -100)
    labels[:, 9] = input_ids[:, 9]
    targets = torch.zeros(3, 4, AUX_CHANNELS)
    targets[2, 2, 0] = 1.0  # class 0 centre in cell 2 of row 1's view
    seq = input_ids.shape[1]
    look = torch.zeros(2, 1, seq, seq)
    look[1, 0, 8, 2] = 1.0
    loss = answer_attention_loss((look,), input_ids, labels, torch.tensor([-1, 0]), targets, 4, layers=(0,))
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def _nano_training_parts(shared_data):
    """A seeded nano model (eager attention: the heads' stages read attention weights), its
    processor, training heads, pointer ids and a small training-split example factory."""
    from eov_edge.core.tokenizer import TextTokenizer
    from eov_edge.model import (
        EarthOneVisionConfig,
        EarthOneVisionForConditionalGeneration,
    )
    from eov_edge.model.processor import EarthOneVisionProcessor
    from eov_edge.training.data.examples import ExampleFactory
    from eov_edge.training.losses import PointerIds, TrainingHeads

    torch.manual_seed(0)
    config = EarthOneVisionConfig.from_preset("nano")
    model = EarthOneVisionForConditionalGeneration(config)
    model.language_model.set_attn_implementation("eager")
    processor = EarthOneVisionProcessor(TextTokenizer.from_file(), config)
    heads = TrainingHeads(config.multi_level_dim, config.text_config.hidden_size, config.image_tokens_per_view)
    ids = PointerIds.from_tokenizer(processor.tokenizer, config.image_token_id)
    factory = ExampleFactory(shared_data, "train", config.image_size, config.vision_config.patch_size,
                             hit_uav_limit=40)
    return model, processor, heads, ids, factory


@pytest.mark.data
def test_vqa_batches_carry_the_asked_class_and_the_answer_attention_loss_runs_without_box_attention(shared_data):
    import random

    from eov_edge.training.losses import training_step
    from eov_edge.training.train import collate

    model, processor, heads, ids, factory = _nano_training_parts(shared_data)
    rng = random.Random(3)
    examples = [factory.sample("vqa", rng) for _ in range(6)] + [factory.sample("caption", rng)]
    batch = collate(examples, processor, model.config.grid_size)
    assert batch["asked_class"].tolist() == [OBJECT_CLASSES.index(e.target["class"]) for e in examples[:6]] + [-1]
    stage = StageConfig("joint", 1, {"vqa": 1.0}, attention_weight=0.0, answer_attention_weight=1.0)
    loss, parts = training_step(model, heads, batch, stage, ids)
    assert "attention" not in parts
    assert any(e.target["count"] > 0 for e in examples[:6])  # this seed asks about objects in view
    assert parts["answer_attention"] > 0  # so there is a real term, though box attention is off
    loss.backward()
    assert torch.isfinite(loss)


def test_cross_modal_alignment_loss_rewards_shared_content_not_position():
    from eov_edge.training.losses import cross_modal_alignment_loss

    torch.manual_seed(0)
    places, tokens, width = 4, 9, 16
    position = torch.randn(tokens, width)
    content = torch.randn(places, tokens, width)

    def views(sar, optical):  # (2P, N, D): SAR p at 2p, optical p at 2p + 1
        return torch.stack([sar, optical], 1).flatten(0, 1) + position

    sar_views = torch.arange(places) * 2
    matched = cross_modal_alignment_loss(views(content, content), sar_views, position)
    shuffled = cross_modal_alignment_loss(views(content, content.roll(1, 0)), sar_views, position)
    position_only = cross_modal_alignment_loss(views(torch.zeros_like(content), torch.zeros_like(content)),
                                               sar_views, position)
    assert matched < 0.01 < torch.log(torch.tensor(places)) < shuffled
    # tokens that only carry their position (the same for every place) stay at chance: log(P)
    assert position_only == pytest.approx(torch.log(torch.tensor(float(places))).item(), rel=1e-4)
    # one place has no negatives: no signal
    assert cross_modal_alignment_loss(views(content, content), sar_views[:1], position) == 0


@pytest.mark.data
def test_language_only_stages_compute_no_head_and_the_recipe_ends_with_them(shared_data):
    import random

    from eov_edge.training.losses import training_step
    from eov_edge.training.train import LANGUAGE_LOSS_ONLY, collate

    model, processor, heads, ids, factory = _nano_training_parts(shared_data)
    rng = random.Random(5)
    batch = collate([factory.sample(task, rng) for task in ("grounding", "vqa", "classification")], processor,
                    model.config.grid_size)
    with_heads = StageConfig("joint", 1, {"vqa": 1.0})
    language_only = StageConfig("answers", 1, {"vqa": 1.0}, **LANGUAGE_LOSS_ONLY)
    loss, parts = training_step(model, heads, batch, language_only, ids)
    assert set(parts) == {"lm"} and loss.item() == pytest.approx(parts["lm"])
    loss.backward()
    assert all(p.grad is None for p in heads.parameters())  # no head was run
    assert all(p.grad is not None for p in model.projector.parameters())  # the answers still train the projector
    full, full_parts = training_step(model, heads, batch, with_heads, ids)
    assert full_parts["lm"] == pytest.approx(parts["lm"])  # the same language loss, plus the heads' terms
    assert {"aux", "token_aux", "pointer", "attention"} <= set(full_parts) and full.item() > loss.item()
    recipe = TrainConfig.pcma("nano").stages
    assert [s.name for s in recipe] == ["alignment", "viewpoint", "imaging_physics", "joint", "sensor_matching",
                                        "answers", "vqa_readout"]
    joint, matching, answers, readout = recipe[-4:]
    assert answers.task_weights == joint.task_weights
    assert all(getattr(answers, name) == 0.0 for name in LANGUAGE_LOSS_ONLY)
    # the cross-modal stage: its examples alone, their match and alignment terms the only heads run,
    # the stem (and so its batch norm statistics) frozen
    assert list(matching.task_weights) == ["cross_modal"] and "stem" not in matching.trainable
    assert all(getattr(matching, name) == 0.0 for name in LANGUAGE_LOSS_ONLY)
    assert matching.cross_modal_match_weight > 0 and matching.cross_modal_align_weight > 0
    assert all(s.cross_modal_match_weight == 0 == s.cross_modal_align_weight for s in recipe if s is not matching)
    # the read-out stage: the decoder alone, language loss plus the answer-attention term
    assert readout.trainable == ("decoder",) and readout.answer_attention_weight > 0
    assert all(getattr(readout, name) == 0.0 for name in LANGUAGE_LOSS_ONLY if name != "answer_attention_weight")


def test_cross_modal_match_loss_reads_the_optical_tokens_and_head_1_on_their_sar_cells():
    from eov_edge.training.losses import TrainingHeads, cross_modal_match_loss

    image, n, width = 7, 4, 8
    # row 0: a cross-modal example (SAR tokens at 1-4, optical at 6-9); row 1: no views of its own
    input_ids = torch.tensor([[1, 7, 7, 7, 7, 2, 7, 7, 7, 7, 3, 4],
                              [1, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]])
    sar, optical = torch.arange(1, 5), torch.arange(6, 10)
    heads = TrainingHeads(4, width, n)
    with torch.no_grad():
        heads.match.weight.zero_()
        heads.match.weight[0, 0] = 1.0
        heads.match.bias.zero_()
    hidden = torch.full((2, 12, width), -10.0)
    hidden[0, optical, 0] = 10.0  # "same place" only where the optical tokens are
    seq = input_ids.shape[1]
    uniform = torch.full((2, 2, seq, seq), 1.0 / seq)  # (B, H, S, S)
    looking = uniform.clone()
    looking[0, 1, optical] = 0.0
    looking[0, 1, optical, sar] = 1.0  # head 1 at optical cell k looks at SAR cell k
    rows, layers = torch.tensor([0]), (0, 1)
    match, attend = cross_modal_match_loss(heads, hidden, (looking, looking), input_ids, rows, torch.tensor([1.0]),
                                           image, n, layers)
    assert match.item() < 1e-3 and attend.item() < 1e-3
    mismatch, attend_uniform = cross_modal_match_loss(heads, hidden, (uniform, looking), input_ids, rows,
                                                      torch.tensor([0.0]), image, n, layers)
    assert mismatch.item() == pytest.approx(10.0, abs=1e-3)  # softplus(10): the optical states say "same"
    # layer 0 uniform (-log 1/12), layer 1 on target (~0): the mean over layers and cells
    assert attend_uniform.item() == pytest.approx(torch.log(torch.tensor(12.0)).item() / 2, rel=1e-4)
    none = cross_modal_match_loss(heads, hidden, (looking,), input_ids, torch.tensor([], dtype=torch.long),
                                  torch.tensor([]), image, n, (0,))
    assert none[0].item() == 0 == none[1].item()


def test_training_heads_leave_the_global_rng_where_the_heads_before_the_match_head_left_it():
    """The match head came after nano-v11: a run seeded as before must draw the same weights."""
    from torch import nn

    from eov_edge.training.losses import TrainingHeads

    torch.manual_seed(0)
    heads = TrainingHeads(24, 16, 9)
    after_heads = torch.rand(3)
    torch.manual_seed(0)
    dense, token_dense, pointer = nn.Linear(24, AUX_CHANNELS), nn.Linear(16, AUX_CHANNELS), nn.Linear(16, 9)
    assert torch.equal(torch.rand(3), after_heads)
    assert torch.equal(heads.pointer.weight, pointer.weight) and torch.equal(heads.dense.weight, dense.weight)
    assert torch.equal(heads.token_dense.weight, token_dense.weight)


@pytest.mark.data
def test_cross_modal_rows_get_the_match_and_alignment_terms(shared_data):
    import random

    from eov_edge.training.losses import training_step
    from eov_edge.training.train import LANGUAGE_LOSS_ONLY, collate

    model, processor, heads, ids, factory = _nano_training_parts(shared_data)
    rng = random.Random(2)
    examples = [factory.sample("vqa", rng)]
    while sum(e.target["answer"] == "A" for e in examples if e.task == "cross_modal") < 2:
        examples.append(factory.sample("cross_modal", rng))
    batch = collate(examples, processor, model.config.grid_size)
    assert batch["cross_modal_rows"].tolist() == list(range(1, len(examples)))
    assert batch["cross_modal_same"].tolist() == [float(e.target["answer"] == "A") for e in examples[1:]]
    stage = StageConfig("sensor_matching", 1, {"cross_modal": 1.0}, **LANGUAGE_LOSS_ONLY, cross_modal_align_weight=1.0,
                        cross_modal_match_weight=1.0)
    loss, parts = training_step(model, heads, batch, stage, ids)
    assert set(parts) == {"lm", "cross_modal_align", "cross_modal_match", "match_attention"}
    loss.backward()
    assert heads.match.weight.grad is not None and heads.pointer.weight.grad is None
    assert model.language_model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("normalization", ["token", "task", "example"])
def test_parts_of_a_batch_sum_to_the_whole_batchs_language_loss(normalization):
    """Micro-batches and data-parallel ranks each take their share: the shares add up to the loss of
    the whole batch, whatever the parts' token counts (rows of 1 to 9 answer tokens here)."""
    from eov_edge.training.losses import loss_groups, loss_totals

    torch.manual_seed(0)
    rows, length, vocab = 6, 12, 40
    logits = torch.randn(rows, length, vocab)
    labels = torch.full((rows, length), -100)
    for row in range(rows):
        answer = 1 + (row * 5) % 9
        labels[row, length - answer:] = torch.randint(0, vocab, (answer,))
    task_index = torch.tensor([0, 3, 3, 1, 0, 3])
    whole = {"labels": labels, "task_index": task_index}
    want = language_loss(logits, labels, 20, 10, 0.5, 2.0, loss_groups(whole, normalization))
    parts = [[0, 4], [1, 2, 5], [3]]
    batches = [{"labels": labels[p], "task_index": task_index[p]} for p in parts]
    totals = loss_totals(batches, normalization)
    got = sum(language_loss(logits[p], labels[p], 20, 10, 0.5, 2.0, loss_groups(b, normalization), t)
              for p, b, t in zip(parts, batches, totals))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # split over two "ranks" whose counts are summed by all_reduce
    first, second = batches[:2], batches[2:]
    both = [loss_totals(first, normalization), loss_totals(second, normalization)]
    summed = [loss_totals(group, normalization, all_reduce=lambda t, o=other: t + _counts(o, normalization))
              for group, other in ((first, second), (second, first))]
    got = sum(language_loss(logits[p], labels[p], 20, 10, 0.5, 2.0, loss_groups(b, normalization), t)
              for p, b, t in zip(parts, batches, summed[0] + summed[1]))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert both[0][0].rows < summed[0][0].rows


def _counts(batches, normalization):
    """The count vector loss_totals sends to all_reduce for ``batches`` (another rank's share)."""
    sent = []
    from eov_edge.training.losses import loss_totals

    loss_totals(batches, normalization, all_reduce=lambda t: sent.append(t) or t)
    return sent[0]
