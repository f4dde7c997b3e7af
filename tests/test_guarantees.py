"""The guarantees every method keeps, run over every entry of ``METHODS`` (and the variants
of ``conftest.METHOD_VARIANTS``): the model left as it was, padded batch = one by one,
clear errors for bad input, finite scores in float32 and bfloat16, determinism.

A method registered later is covered without editing this file:
:func:`test_a_newly_registered_method_is_picked_up` shows it.
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_same_state, padded_batch, snapshot, tiny_bert, tiny_model, unusual_model
from captum_attcat import target_kind

FAMILIES = ["bert", "roberta", "distilbert", "electra", "gpt2"]


def _explain(explainer, inputs, target, mask=None, **kwargs):
    extra = () if mask is None else (mask,)
    return explainer.attribute(inputs, target=target, additional_forward_args=extra, **kwargs)


# --- the model is left exactly as it was -------------------------------------------------


def test_state_restored_after_return_and_raise(method_case):
    model = unusual_model()
    ids, mask = padded_batch([6, 4])
    before = snapshot(model)
    scores = _explain(method_case(model), ids, 1, mask)
    assert_same_state(before, snapshot(model))
    with pytest.raises(ValueError, match="out of range"):
        _explain(method_case(model), ids, 7, mask)
    assert_same_state(before, snapshot(model))
    model.eval()  # the explanation ran in eval mode (dropout off)
    torch.testing.assert_close(_explain(method_case(model), ids, 1, mask), scores)


def test_inputs_left_unchanged(method_case):
    model = tiny_bert()
    ids, mask = padded_batch([6, 4])
    embeddings = model.get_input_embeddings()(ids).detach()
    copies = ids.clone(), mask.clone(), embeddings.clone()
    explainer = method_case(model)
    from_ids = _explain(explainer, ids, 1, mask)
    from_embeddings = _explain(explainer, embeddings, 1, mask)
    assert torch.equal(ids, copies[0]) and torch.equal(mask, copies[1]) and torch.equal(embeddings, copies[2])
    assert not embeddings.requires_grad and embeddings.grad is None
    torch.testing.assert_close(from_embeddings, from_ids)


@pytest.mark.parametrize("change", ["in place", ".data in place", ".data copy_", ".data assigned", "load_state_dict"])
def test_weights_changed_between_calls_are_seen(method_case, change):
    """A reused explainer gives what a fresh one gives after the weights change in any way
    (writes through ``.data`` bump no version counter): no cache serves stale weights."""
    model = tiny_bert()
    ids, mask = padded_batch([8, 5])
    explainer = method_case(model)
    before = _explain(explainer, ids, 1, mask)
    layers = [model.bert.encoder.layer[i].intermediate.dense for i in range(3)]
    layers += [model.bert.encoder.layer[i].attention.self.value for i in range(3)]
    layers += [model.bert.encoder.layer[i].attention.self.query for i in range(3)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for layer in layers:
        weight = layer.weight
        new = -4 * weight.detach() + 0.01
        if change == "in place":
            with torch.no_grad():
                weight.copy_(new)
        elif change == ".data in place":
            weight.data.mul_(-4).add_(0.01)
        elif change == ".data copy_":
            weight.data.copy_(new)
        elif change == ".data assigned":
            weight.data = new
        else:
            state[[k for k, v in model.named_parameters() if v is weight][0]] = new
    if change == "load_state_dict":
        model.load_state_dict(state)
    after = _explain(explainer, ids, 1, mask)
    assert torch.equal(after, _explain(method_case(model), ids, 1, mask))
    assert (after - before)[:, 1:].abs().max() > 1e-3 * before[:, 1:].abs().max()  # [CLS] aside: GAE keeps ~1 there


def test_frozen_encoder(method_case):
    """The usual "train only the head" setup: every parameter but the classifier's frozen.
    The scores are those of the unfrozen model, and the flags stay as they were."""
    model = tiny_bert()
    ids, mask = padded_batch([8, 5])
    unfrozen = _explain(method_case(model), ids, 1, mask)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("classifier"))
    before = snapshot(model)
    torch.testing.assert_close(_explain(method_case(model), ids, 1, mask), unfrozen, rtol=0, atol=0)
    assert_same_state(before, snapshot(model))


def test_explicit_form_with_a_plain_function(method_case):
    """Captum's explicit form on a plain function of the model (nothing frozen, the
    embeddings outside the given blocks) gives the scores of the automatic form."""
    model = tiny_bert()
    ids, mask = padded_batch([8, 5])
    before = snapshot(model)
    explicit = _explain(method_case(model, explicit=True), ids, 1, mask)
    torch.testing.assert_close(explicit, _explain(method_case(model), ids, 1, mask))
    assert_same_state(before, snapshot(model))


# --- batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_equals_one_by_one(method_case, family):
    model = tiny_model(family)
    explainer = method_case(model)
    if family == "gpt2" and type(explainer).__name__ == "TransformerLRP":
        # relevance at the input of this random decoder is ill-conditioned: batch and single
        # runs differ by 2e-4 in float32 (sums of large opposite terms), by 4e-13 in float64
        model = model.double()
    lengths = [7, 3, 11, 1]
    ids, mask = padded_batch(lengths, pad=model.config.pad_token_id or 0)
    target = torch.tensor([1, 0, 1, 1])
    batch = _explain(explainer, ids, target, mask)
    assert batch.shape == ids.shape and torch.isfinite(batch).all()
    assert batch.dtype == (torch.float64 if model.dtype == torch.float64 else torch.float32)
    for row, length in enumerate(lengths):
        alone = _explain(explainer, ids[row : row + 1, :length], int(target[row]))
        torch.testing.assert_close(batch[row, :length], alone[0], rtol=1e-5, atol=1e-5)
        assert batch[row, length:].eq(0).all()


def test_scores_are_not_trivially_zero(method_case):
    """What the batch test compares is not all zeros (a method clamping at 0 may give 0 on
    some random models, e.g. Att-GradCAM on the tiny RoBERTa, whose head weights are all < 0)."""
    model = tiny_bert()
    ids, mask = padded_batch([7, 3, 11, 1])
    scores = _explain(method_case(model), ids, 0, mask)
    assert (scores[:3].abs().sum(1) > 0).all()


# --- bad input -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model3():
    return tiny_bert()  # 3 classes, vocabulary 100, 40 positions


@pytest.mark.parametrize(
    "target, message",
    [
        (3, r"`target` 3 is out of range: the model has 3 classes"),
        (-1, r"`target` -1 is out of range"),
        ([0, 5], r"`target` 5 is out of range"),
        (torch.tensor([0, 1, 2]), r"`target` has 3 entries for a batch of 2"),
    ],
)
def test_bad_target(model3, method_case, target, message):
    ids, mask = padded_batch([6, 4])
    with pytest.raises(ValueError, match=message):
        _explain(method_case(model3), ids, target, mask)


@pytest.mark.parametrize(
    "target, error, message",
    [
        (1.0, TypeError, r"`target` must be an int, a list of ints or an integer tensor .*got float 1.0"),
        ("1", TypeError, r"`target` must be .*got str '1'"),
        (True, TypeError, r"`target` must be .*got bool True"),
        ((0, 1), TypeError, r"`target` must be .*got tuple"),
        (__import__("numpy").int64(1), TypeError, r"`target` must be .*got int64"),
        (torch.tensor([0.0, 1.0]), TypeError, r"got a torch.float32 tensor"),
        (torch.tensor([[0], [1]]), TypeError, r"of shape \(2, 1\)"),
        ([1], ValueError, r"`target` has 1 entries for a batch of 2 examples \(a list holds one class per example"),
        ([0, 1, 1], ValueError, r"`target` has 3 entries for a batch of 2"),
    ],
)
def test_junk_targets(model3, method_case, target, error, message):
    """Every method, those that do not need a target too, rejects one it cannot use."""
    ids, mask = padded_batch([6, 4])
    explainer = method_case(model3)
    if target_kind(target) not in explainer.accepted_targets:  # refused for its kind before it is read
        error, message = ValueError, f"{type(explainer).__name__} explains class targets only"
    with pytest.raises(error, match=message):
        _explain(explainer, ids, target, mask)


def test_bad_inputs_of_every_kind(model3, method_case):
    ids, mask = padded_batch([6, 4])
    explainer = method_case(model3)
    with pytest.raises(TypeError, match=r"token ids must be int64 or int32; got torch.uint8 \(use .long\(\)\)"):
        _explain(explainer, ids.to(torch.uint8), 0, mask)
    embeddings = model3.get_input_embeddings()(ids).detach()
    with pytest.raises(ValueError, match=r"embeddings\) are 31 wide but the model's embeddings are 32 wide"):
        _explain(explainer, embeddings[..., :31], 0, mask)
    with pytest.raises(TypeError, match=r"embeddings\) are torch.float64 but the model is torch.float32"):
        _explain(explainer, embeddings.double(), 0, mask)
    for types, message in [(torch.zeros(2, 5, dtype=torch.long), r"`token_type_ids` .* has shape \(2, 5\)"),
                           (torch.full((2, 6), 2), r"`token_type_ids` .* must lie in \[0, 2\) .*found 2"),
                           (torch.zeros(2, 6), r"`token_type_ids` .* must be an integer tensor")]:
        with pytest.raises((ValueError, TypeError), match=message):
            explainer.attribute(ids, target=0, additional_forward_args=(mask, types))
    padded = mask.clone()
    padded[1] = 0
    with pytest.raises(ValueError, match="example 1 has no real token: its attention mask is all 0"):
        _explain(explainer, ids, 0, padded)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"cannot explain inside torch.inference_mode\(\)"):
        _explain(explainer, ids, 0, mask)
    with torch.inference_mode():
        made_there = ids.clone(), mask.clone()
    torch.testing.assert_close(_explain(explainer, *made_there[:1], 0, made_there[1]), _explain(explainer, ids, 0, mask))
    with torch.no_grad():  # inside no_grad the methods still take their gradients
        torch.testing.assert_close(_explain(explainer, ids, 0, mask), _explain(explainer, ids, 0, mask))


def test_missing_target_is_required_or_unused(model3, method_case):
    """Without a target a method either says it needs one, or does not depend on it."""
    ids, mask = padded_batch([6, 4])
    explainer = method_case(model3)
    try:
        scores = _explain(explainer, ids, None, mask)
    except ValueError as error:
        assert "`target` is required: the model returns 3 scores per example" in str(error)
    else:
        assert torch.equal(scores, _explain(explainer, ids, 2, mask))


@pytest.mark.parametrize(
    "make_inputs, message",
    [
        (lambda ids: ids.clone().index_fill_(1, torch.tensor([2]), 100), r"token ids must lie in \[0, 100\).*found 100"),
        (lambda ids: ids - 10, r"token ids must lie in \[0, 100\).*found -"),
        (lambda ids: ids[:, :0], r"empty sequence"),
        (lambda ids: ids[:0], r"empty batch"),
        (lambda ids: torch.randint(1, 99, (1, 41)), r"length 41 is longer than the model allows \(40 positions\)"),
        (lambda ids: ids[0], r"integer token ids of shape \(batch, seq\)"),
        (lambda ids: ids.tolist(), r"must be a tensor"),
    ],
)
def test_bad_token_ids(model3, method_case, make_inputs, message):
    ids, _ = padded_batch([6, 4])
    with pytest.raises((ValueError, TypeError), match=message):
        _explain(method_case(model3), make_inputs(ids), 0)


def test_nan_and_inf_embeddings(model3, method_case):
    ids, mask = padded_batch([6, 4])
    embeddings = model3.get_input_embeddings()(ids).detach()
    for bad in (float("nan"), float("inf")):
        broken = embeddings.clone()
        broken[0, 1, 3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            _explain(method_case(model3), broken, 0, mask)


def test_bad_attention_mask(model3, method_case):
    ids, mask = padded_batch([6, 4])
    with pytest.raises(ValueError, match=r"attention mask .* has shape \(2, 5\) but the inputs have .* \(2, 6\)"):
        _explain(method_case(model3), ids, 0, mask[:, :5])
    with pytest.raises(ValueError, match="only 0 and 1"):
        _explain(method_case(model3), ids, 0, mask * 2)


# --- finite and deterministic ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_on_many_random_inputs(method_case, dtype):
    """60 random inputs: random ids of random lengths, all-[PAD] ids, all-zero embeddings."""
    model = tiny_bert(seed=3).to(dtype)
    generator = torch.Generator().manual_seed(7)
    lengths = torch.randint(1, 16, (40,), generator=generator).tolist()
    ids, mask = padded_batch(lengths, seed=11)
    ids[:5] = 0  # [PAD] ids everywhere, still attended to
    zeros = torch.zeros(20, 16, 32, dtype=dtype)
    explainer = method_case(model)
    for inputs, attention_mask in ((ids, mask), (zeros, torch.ones(20, 16, dtype=torch.long))):
        target = torch.randint(0, 3, (inputs.shape[0],), generator=generator)
        scores = _explain(explainer, inputs, target, attention_mask)
        assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
        assert scores[attention_mask == 0].eq(0).all()


def test_deterministic(method_case):
    model = tiny_bert()
    ids, mask = padded_batch([8, 5])
    explainer = method_case(model)
    first = _explain(explainer, ids, 1, mask)
    assert torch.equal(first, _explain(explainer, ids, 1, mask))
    assert torch.equal(first, _explain(method_case(model), ids, 1, mask))


# --- threads ----------------------------------------------------------------------------------


def test_threads_share_one_model():
    """4 threads x 2 methods (an LRP and a gradient method) on one model, several calls each:
    bit for bit the single-thread results, and the model left as it was."""
    from concurrent.futures import ThreadPoolExecutor

    from captum_attcat import METHODS

    model = unusual_model()
    ids, mask = padded_batch([9, 6, 4])
    names = ["TransAtt", "AttentionGradient", "MaskLRP", "AttCAT"]
    explainers = {name: METHODS[name](model) for name in names}
    alone = {name: _explain(explainers[name], ids, 1, mask) for name in names}
    before = snapshot(model)

    def work(index: int) -> list[tuple[str, torch.Tensor]]:
        pair = [names[index % 4], names[(index + 1) % 4]]
        return [(name, _explain(explainers[name], ids, 1, mask)) for _ in range(3) for name in pair]

    with ThreadPoolExecutor(4) as pool:
        results = [r for rows in pool.map(work, range(8)) for r in rows]
    assert len(results) == 48
    for name, scores in results:
        assert torch.equal(scores, alone[name]), name
    assert_same_state(before, snapshot(model))


# --- coverage of methods registered later ---------------------------------------------------------

_THROWAWAY = '''
import torch
from captum_attcat import METHODS, CAT, register_method


@register_method("ThrowawayCAT")
class ThrowawayCAT(CAT):
    """CAT, registered only in this run{broken}."""

    def attribute(self, inputs, target=None, additional_forward_args=None):
        scores = super().attribute(inputs, target, additional_forward_args)
{body}
        return scores
'''


@pytest.mark.parametrize("broken", [False, True])
def test_a_newly_registered_method_is_picked_up(pytester, broken):
    """A method registered by a plugin (standing for one added to the library later) runs
    through every guarantee test above; one that breaks a guarantee (leaves a hook on the
    model) fails them. Nothing stays registered here."""
    from captum_attcat import METHODS

    body = "        self.adapter.roots[0].register_forward_hook(lambda *a: None)" if broken else ""
    pytester.makepyfile(throwaway_method=_THROWAWAY.format(broken=", broken" if broken else "", body=body))
    pytester.syspathinsert()
    here = __import__("pathlib").Path(__file__)
    result = pytester.runpytest_subprocess(
        "-p", "throwaway_method", "-q", "-p", "no:cacheprovider", f"--rootdir={here.parent.parent}",
        str(here), "-k", "ThrowawayCAT and not picked_up",
    )
    outcomes = result.parseoutcomes()
    ran = outcomes.get("passed", 0) + outcomes.get("failed", 0)
    assert ran >= 20, result.stdout.str()[-2000:]
    if broken:
        assert "FAILED" in result.stdout.str() and "test_state_restored_after_return_and_raise[ThrowawayCAT]" in \
            result.stdout.str()
    else:
        assert outcomes.get("failed", 0) == 0, result.stdout.str()[-3000:]
    assert "ThrowawayCAT" not in METHODS
