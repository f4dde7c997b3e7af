"""The LRP engine and its rules: what each rule promises, conservation, swapping rules, the model left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum_attcat import PartialLRP, TransAtt, TransformerLRP
from captum_attcat.lrp import (
    AlphaBetaRule,
    EpsilonRule,
    IdentityRule,
    LRPRules,
    NormalizedAddRule,
    ProductRule,
    Propagation,
    lrp_forward,
    safe_divide,
)

from conftest import padded_batch, tiny_bert, tiny_model
from captum_attcat.lrp.rules import same_bits

LRP_METHODS = [TransformerLRP, PartialLRP, TransAtt]


def _double(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- the rules, one by one --------------------------------------------------------------


def test_safe_divide():
    """The reference divides by ``b + 1e-9`` whatever the sign of ``b``, 0 where ``b`` is 0;
    a denominator the stabiliser cancels gives 0, not inf. ``signed`` stabilises away from 0."""
    numerator = torch.tensor([1.0, 1.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    denominator = torch.tensor([0.0, 1e-9, -1e-9, 4.0, -3.0], dtype=torch.float64)
    assert safe_divide(numerator, denominator).tolist() == [0.0, 1 / 2e-9, 0.0, 2 / (4 + 1e-9), 3 / (-3 + 1e-9)]
    signed = safe_divide(numerator, denominator, signed=True)
    assert signed.tolist() == [0.0, 1 / 2e-9, -1 / 2e-9, 2 / (4 + 1e-9), 3 / (-3 - 1e-9)]


def test_alpha_beta_matches_the_sign_split_formula_and_conserves():
    x, weight, bias = _double(2, 5, 7), _double(4, 7, seed=1), _double(4, seed=2)
    relevance = _double(2, 5, 4, seed=3)
    output = F.linear(x, weight, bias)
    px, nx, pw, nw = x.clamp(min=0), x.clamp(max=0), weight.clamp(min=0), weight.clamp(max=0)

    def split(w1, w2):  # x+ (S w1) + x- (S w2), S = R / (x+ w1 + x- w2)
        s = relevance / (F.linear(px, w1) + F.linear(nx, w2) + 1e-9)
        return px * (s @ w1) + nx * (s @ w2)

    got = AlphaBetaRule().relevance(x, weight, bias, output, relevance)
    torch.testing.assert_close(got, split(pw, nw), rtol=1e-12, atol=1e-12)
    # the bias takes nothing: every unit with positive contributions passes on exactly what it
    # received (up to the 1e-9 stabiliser); units without any (z+ = 0) pass on nothing
    positive = F.linear(px, pw) + F.linear(nx, nw)
    assert (positive == 0).any()  # this draw has some
    torch.testing.assert_close(got.sum(-1), (relevance * (positive > 0)).sum(-1), rtol=1e-7, atol=0)
    negative = F.linear(px, nw) + F.linear(nx, pw)
    for signed, stabilizer in ((False, 1e-9), (True, -1e-9)):  # z- + eps as the reference, or z- - eps
        two_one = AlphaBetaRule(alpha=2, beta=1, signed=signed).relevance(x, weight, bias, output, relevance)
        inhibitor = (relevance / (negative + stabilizer)) * (negative != 0)
        expected = 2 * split(pw, nw) - (px * (inhibitor @ nw) + nx * (inhibitor @ pw))
        torch.testing.assert_close(two_one, expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="alpha - beta must be 1"):
        AlphaBetaRule(alpha=1, beta=1)


@pytest.mark.parametrize("silent_row", [False, True])
def test_alpha_beta_leaves_out_units_without_relevance_exactly(silent_row):
    """Output units that receive no relevance (MaskLRP's masked heads) are left out of the products:
    the same numbers as the sign-split formula over every unit, for both rules."""
    x, weight, bias = _double(3, 5, 7), _double(8, 7, seed=1), _double(8, seed=2)
    relevance = _double(3, 5, 8, seed=3)
    relevance[..., [0, 2, 3, 5, 6, 7]] = 0  # two live units of eight
    if silent_row:
        relevance[0, 0] = 0  # the row looked at first says nothing
    output = F.linear(x, weight, bias)
    px, nx, pw, nw = x.clamp(min=0), x.clamp(max=0), weight.clamp(min=0), weight.clamp(max=0)
    s = relevance / (F.linear(px, pw) + F.linear(nx, nw) + 1e-9)
    torch.testing.assert_close(AlphaBetaRule().relevance(x, weight, bias, output, relevance),
                               px * (s @ pw) + nx * (s @ nw), rtol=1e-12, atol=1e-12)
    negative = F.linear(px, nw) + F.linear(nx, pw)
    inhibitor = (relevance / (negative + 1e-9)) * (negative != 0)
    torch.testing.assert_close(AlphaBetaRule(alpha=2, beta=1).relevance(x, weight, bias, output, relevance),
                               2 * (px * (s @ pw) + nx * (s @ nw)) - (px * (inhibitor @ nw) + nx * (inhibitor @ pw)),
                               rtol=1e-10, atol=1e-10)


def test_alpha_beta_gives_nothing_through_units_without_positive_contributions():
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    weight = torch.tensor([[-1.0, 2.0], [3.0, 1.0]], dtype=torch.float64)  # unit 0: z+ = 0
    relevance = torch.tensor([[5.0, 1.0]], dtype=torch.float64)
    got = AlphaBetaRule().relevance(x, weight, None, F.linear(x, weight), relevance)
    torch.testing.assert_close(got, torch.tensor([[1.0 * 3 / (3 + 1e-9), 0.0]], dtype=torch.float64))


def test_epsilon_rule():
    x, weight, bias = _double(3, 6), _double(2, 6, seed=1), _double(2, seed=2)
    relevance, output = _double(3, 2, seed=3), F.linear(x, weight, bias)
    expected = x * ((relevance / (output + 1e-3 * output.sign())) @ weight)
    torch.testing.assert_close(EpsilonRule(1e-3).relevance(x, weight, bias, output, relevance), expected)


def test_normalized_add_passes_on_what_it_received_per_example():
    a, b = _double(3, 4, 5), _double(3, 4, 5, seed=1)
    relevance = _double(3, 4, 5, seed=2)
    ra, rb = NormalizedAddRule().relevance(a, b, a + b, relevance)
    total, sa, sb = relevance.sum((1, 2)), ra.sum((1, 2)), rb.sum((1, 2))
    torch.testing.assert_close(sa + sb, total)  # conserved, example by example
    za, zb = (a * relevance / (a + b)).sum((1, 2)), (b * relevance / (a + b)).sum((1, 2))
    torch.testing.assert_close(sa, za.abs() / (za.abs() + zb.abs()) * total)  # share |sum R_a| / (...)
    # within an operand, the z-rule's proportions are kept
    torch.testing.assert_close(ra / (a * relevance / (a + b)), (sa / za)[:, None, None].expand(3, 4, 5))
    for i in range(3):  # each example alone gives the same
        alone = NormalizedAddRule().relevance(a[i : i + 1], b[i : i + 1], (a + b)[i : i + 1], relevance[i : i + 1])
        torch.testing.assert_close(alone[0][0], ra[i])



def test_normalized_add_edge_cases():
    """An operand that is 0 in one example receives nothing there (no NaN, the other takes
    everything); an operand shared by the whole batch is rescaled example by example."""
    a, b, relevance = _double(2, 4, 5), _double(2, 4, 5, seed=1), _double(2, 4, 5, seed=2)
    a[1] = 0
    ra, rb = NormalizedAddRule().relevance(a, b, a + b, relevance)
    assert torch.isfinite(ra).all() and torch.isfinite(rb).all()
    assert torch.equal(ra[1], torch.zeros_like(ra[1]))
    torch.testing.assert_close(rb[1].sum(), relevance[1].sum())
    zeros = torch.zeros(2, 4, 5, dtype=torch.float64)
    ra, rb = NormalizedAddRule().relevance(zeros, zeros, zeros, relevance)
    assert not ra.any() and not rb.any()
    shared = _double(1, 4, 5, seed=3)
    ra, rb = NormalizedAddRule().relevance(shared, b, shared + b, relevance)
    assert ra.shape == (2, 4, 5)  # autograd sums it back to the shared operand's shape
    torch.testing.assert_close((ra + rb).sum((1, 2)), relevance.sum((1, 2)))

def test_product_rule_halves_the_z_rule_and_conserves():
    a, b = _double(2, 3, 4, 5), _double(2, 3, 5, 6, seed=1)
    relevance = _double(2, 3, 4, 6, seed=2)
    output = a @ b
    ra, rb = ProductRule().relevance(a, b, output, relevance)
    s = relevance / (output + 1e-9 * output.sign())
    torch.testing.assert_close(ra, 0.5 * a * (s @ b.transpose(-1, -2)))
    torch.testing.assert_close(rb, 0.5 * b * (a.transpose(-1, -2) @ s))
    torch.testing.assert_close(ra.sum() + rb.sum(), relevance.sum())


def test_identity_rule():
    relevance = _double(2, 3)
    assert IdentityRule().relevance(_double(2, 3, seed=1), _double(2, 3, seed=2), relevance) is relevance


def test_rules_are_checked():
    with pytest.raises(TypeError, match="`linear` must be a LinearRule"):
        LRPRules(linear=IdentityRule())
    with pytest.raises(TypeError, match="`modules` maps modules with a `weight`"):
        LRPRules(modules={nn.GELU(): EpsilonRule()})
    with pytest.raises(TypeError, match="`rules` must be an LRPRules"):
        TransAtt(tiny_bert(), rules=EpsilonRule())


# --- the engine on whole models ---------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra"])
def test_relevance_is_conserved_from_logit_to_encoder_input(family):
    """Every rule conserves: the scores of TransformerLRP sum to the 1.0 started at the logit."""
    model = tiny_model(family)
    ids, mask = padded_batch([9, 4, 6], pad=model.config.pad_token_id or 0)
    scores = TransformerLRP(model).attribute(ids, target=torch.tensor([0, 1, 1]), additional_forward_args=(mask,))
    torch.testing.assert_close(scores.sum(1), torch.ones(3), rtol=0, atol=1e-4)


def test_gradient_mode_gives_the_ordinary_gradients():
    model = tiny_bert()
    ids, mask = padded_batch([8, 5])
    explainer = TransAtt(model)
    run = explainer.record_relevance(ids, 1, (mask,), blocks=[0, 1, 2], attention_grads=True)
    plain = explainer.record_gradients(ids, 1, (mask,), block_inputs=None, attention_grads=True)
    for ours, theirs in zip(run.attention_grads, plain.attention_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    for ours, theirs in zip(run.attentions, plain.attentions):
        torch.testing.assert_close(ours, theirs)


def test_live_rows_finds_the_rows_that_carry_something():
    from captum_attcat.lrp.engine import _live_rows

    grad = torch.zeros(4, 16, 8)
    grad[:, 0] = 1.0  # a pooler reading [CLS]: one live row per example
    grad[2, 5, 3] = -2.0
    assert _live_rows(grad).tolist() == [0, 16, 32, 37, 48]
    assert _live_rows(torch.ones(4, 16, 8)) is None  # mostly live: the whole tensor
    assert _live_rows(torch.zeros(1, 8)) is None
    assert _live_rows(torch.zeros(3, 8)).tolist() == []


@pytest.mark.parametrize("name", ["TransAtt", "TransformerLRP"])
def test_working_on_live_rows_only_changes_nothing(monkeypatch, name):
    """The row selection in the linear layers' backward is a shortcut, not an approximation."""
    import captum_attcat.lrp.engine as engine

    model = tiny_bert()
    ids, mask = padded_batch([9, 4, 6])
    explainer = {"TransAtt": TransAtt, "TransformerLRP": TransformerLRP}[name](model)
    selected: list[bool] = []
    live_rows = engine._live_rows

    def recording(grad: torch.Tensor) -> torch.Tensor | None:
        rows = live_rows(grad)
        selected.append(rows is not None)
        return rows

    monkeypatch.setattr(engine, "_live_rows", recording)
    fast = explainer.attribute(ids, target=1, additional_forward_args=(mask,))
    assert any(selected)  # the shortcut was taken (above the pooler) ...
    monkeypatch.setattr(engine, "_live_rows", lambda g: None)
    dense = explainer.attribute(ids, target=1, additional_forward_args=(mask,))
    torch.testing.assert_close(fast, dense, rtol=1e-5, atol=1e-7)


def test_swapping_rules():
    model = tiny_bert()
    ids, mask = padded_batch([8, 5])
    default = TransformerLRP(model).attribute(ids, target=1, additional_forward_args=(mask,))
    explicit = TransformerLRP(model, rules=LRPRules(linear=AlphaBetaRule())).attribute(
        ids, target=1, additional_forward_args=(mask,)
    )
    assert torch.equal(default, explicit)
    epsilon = TransformerLRP(model, rules=LRPRules(linear=EpsilonRule(1e-6))).attribute(
        ids, target=1, additional_forward_args=(mask,)
    )
    one_module = TransformerLRP(model, rules=LRPRules(modules={model.classifier: EpsilonRule(1e-6)})).attribute(
        ids, target=1, additional_forward_args=(mask,)
    )
    for other in (epsilon, one_module):
        assert (other - default).abs().max() > 1e-3 and torch.isfinite(other).all()
    assert not torch.equal(epsilon, one_module)


class _SinBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.linear(hidden))


def test_an_operation_without_a_rule_is_named():
    block = _SinBlock()
    head = nn.Linear(4, 2)
    forward = lambda x: head(block(x).mean(1))  # noqa: E731
    with pytest.raises(NotImplementedError, match=r"no rule for `torch.sin`"):
        TransformerLRP(forward, layers=[block]).attribute(torch.randn(1, 3, 4), target=0)


class _CodeBlock(nn.Module):
    """A block whose code is one of the cases the engine must refuse or handle."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case, self.linear = case, nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=case == "inplace module")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        y = self.linear(hidden)
        if self.case == "tuple":
            return torch.std_mean(y, dim=-1, keepdim=True)[1] + hidden
        if self.case == "max":
            return y.max(-1, keepdim=True).values + hidden
        if self.case == "no_grad":
            with torch.no_grad():
                constant = y * 2
            return hidden + constant
        if self.case == "iadd":
            y = y * 3.0
            y += hidden
            y /= 2.0
            return y
        if self.case == "add":
            return (y * 3.0 + hidden) / 2.0
        if self.case == "iadd linear":
            y += hidden
            return y
        if self.case == "exp_":
            return y.exp_() + hidden
        return self.act(y) + hidden  # "inplace module" / "plain"


@pytest.mark.parametrize("case, message", [
    ("tuple", r"no rule for `torch.std_mean`"),
    ("max", r"no rule for `torch.Tensor.max`"),
    ("no_grad", r"`torch.Tensor.mul` runs under torch.no_grad\(\) on a relevance-carrying tensor"),
    ("exp_", r"`torch.Tensor.exp_` changes a relevance-carrying tensor in place and the LRP engine has no rule"),
    ("iadd linear", r"`torch.Tensor.add_` changes the output of a linear layer in place"),
])
def test_operations_the_engine_cannot_follow_are_refused_by_name(case, message):
    """Tuple-returning operations, model code under no_grad and in-place writes on
    relevance-carrying tensors: an error naming the operation, never a silent result."""
    torch.manual_seed(0)
    block, head = _CodeBlock(case), nn.Linear(4, 2)
    forward = lambda x: head(block(x)[:, 0])  # noqa: E731
    with pytest.raises(NotImplementedError, match=message):
        TransformerLRP(forward, layers=[block]).attribute(torch.randn(2, 3, 4), target=0)


@pytest.mark.parametrize("plain_case, in_place_case", [("add", "iadd"), ("plain", "inplace module")])
def test_in_place_code_takes_the_rules_of_its_out_of_place_form(plain_case, in_place_case):
    """``y += x; y /= 2`` gives what ``(y + x) / 2`` gives, and ``nn.ReLU(inplace=True)`` what
    ``nn.ReLU()`` gives: relevance and gradients alike."""
    torch.manual_seed(0)
    plain, in_place = _CodeBlock(plain_case), _CodeBlock(in_place_case)
    in_place.load_state_dict(plain.state_dict())
    head = nn.Linear(4, 2)
    x = torch.randn(2, 3, 4)
    results = [TransformerLRP(lambda x, b=b: head(b(x)[:, 0]), layers=[b]).attribute(x, target=0)
               for b in (plain, in_place)]
    torch.testing.assert_close(results[1], results[0])
    grads = []
    for block in (plain, in_place):
        leaf = x.clone().requires_grad_()
        grads.append(torch.autograd.grad(head(block(leaf)[:, 0])[:, 0].sum(), leaf)[0])
    torch.testing.assert_close(grads[1], grads[0])


def test_compiled_and_wrapped_models_are_explained_as_the_module_inside():
    model = tiny_bert()
    ids, mask = padded_batch([7, 4])
    expected = TransAtt(model).attribute(ids, target=1, additional_forward_args=(mask,))
    for wrapper in (torch.compile(model), torch.nn.DataParallel(model)):
        torch.testing.assert_close(TransAtt(wrapper).attribute(ids, target=1, additional_forward_args=(mask,)),
                                   expected, rtol=0, atol=0)


def test_no_autocast_and_no_backward_hooks_during_relevance():
    model = tiny_bert()
    ids, mask = padded_batch([7, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="cannot run under torch.autocast"):
        TransAtt(model).attribute(ids, target=1, additional_forward_args=(mask,))
    calls = []
    handle = model.bert.encoder.layer[1].register_full_backward_hook(lambda *args: calls.append(args))
    try:
        TransAtt(model).attribute(ids, target=1, additional_forward_args=(mask,))
        assert calls == [] and model.bert.encoder.layer[1]._backward_hooks  # not called, still there
        model(ids, attention_mask=mask).logits.sum().backward()
        assert len(calls) == 1  # and it still works for the user
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)


def test_engine_on_an_explicit_model_with_its_own_attention():
    """A model computing attention itself (not through transformers): the engine finds
    the products and the softmax by itself; relevance is conserved (wide enough
    layers that no unit lacks positive contributions)."""

    class Attention(nn.Module):
        def forward(self, q, k):
            return torch.softmax(q @ k.mT / 2.0, dim=-1)[:, None]  # one head

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
            self.attention = Attention()

        def forward(self, h):
            probs = self.attention(self.q(h), self.k(h))
            return F.layer_norm(h + probs[:, 0] @ self.v(h), (16,))

    torch.manual_seed(0)
    blocks = nn.ModuleList([Block(), Block()])
    head = nn.Linear(16, 3)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks, self.head = blocks, head

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(torch.tanh(x[:, 0]))

    model = Model()
    x = torch.randn(2, 5, 16)
    lrp = TransformerLRP(model, layers=list(blocks)).attribute(x, target=1)
    torch.testing.assert_close(lrp.sum(1), torch.ones(2), rtol=0, atol=1e-4)
    scores = TransAtt(model, layers=list(blocks), attention_modules=[b.attention for b in blocks]).attribute(
        x, target=1
    )
    assert scores.shape == (2, 5) and torch.isfinite(scores).all() and scores[:, 0].eq(0).all()
    assert not x.requires_grad


def test_lrp_forward_alone():
    """The engine used directly: gradients and relevance from one forward pass."""
    model = tiny_bert(attn_implementation="eager")  # sdpa is one fused op without a rule
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    embeddings = torch.randn(2, 6, 32, requires_grad=True)
    propagation = Propagation()
    with lrp_forward(propagation):
        logits = model(inputs_embeds=embeddings).logits
    (grad,) = propagation.gradients(logits[:, 1], [embeddings], retain_graph=True)
    (relevance,) = propagation.relevance(logits[:, 1], [embeddings])
    (plain,) = torch.autograd.grad(model(inputs_embeds=embeddings).logits[:, 1].sum(), embeddings)
    torch.testing.assert_close(grad, plain, rtol=1e-5, atol=1e-7)
    assert relevance.shape == embeddings.shape and not torch.allclose(relevance, grad)
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def test_captum_lrp_cannot_run_a_hugging_face_bert_but_this_engine_can():
    """What the README claims this engine adds over Captum's own LRP."""
    from captum.attr import LRP

    model = tiny_bert()
    ids = torch.randint(5, 99, (1, 6))
    with pytest.raises(TypeError, match="Embedding'> has no rule defined"):
        LRP(model).attribute(ids, target=0)
    assert torch.isfinite(TransformerLRP(model).attribute(ids, target=0)).all()


def test_alpha_beta_cache_follows_the_weights():
    """The rule's cached [W, |W|] is recomputed when a weight changes in place, and dropped when it is freed."""
    model = tiny_bert()
    ids, mask = padded_batch([8, 5])
    explainer = TransformerLRP(model)
    before = explainer.attribute(ids, target=1, additional_forward_args=(mask,))
    with torch.no_grad():
        model.bert.encoder.layer[1].intermediate.dense.weight.mul_(-1.5)
    after = explainer.attribute(ids, target=1, additional_forward_args=(mask,))
    assert torch.equal(after, TransformerLRP(model).attribute(ids, target=1, additional_forward_args=(mask,)))
    assert (after - before).abs().max() > 1e-4
    rule = AlphaBetaRule()
    weight = torch.randn(3, 4)
    rule.relevance(torch.randn(2, 4), weight, None, torch.randn(2, 3), torch.randn(2, 3))
    assert len(rule._splits) == 1
    del weight
    other = torch.randn(3, 4)
    rule.relevance(torch.randn(2, 4), other, None, torch.randn(2, 3), torch.randn(2, 3))
    assert list(rule._splits) == [id(other)]  # the freed weight's entry is gone


def test_explainers_free_their_rules_caches():
    """Explainers built one after another on one model (a server, a runner) leave nothing behind:
    their rules, and with them the cached weight copies, are freed with them."""
    import gc
    import weakref

    model = tiny_bert()
    ids, mask = padded_batch([8, 5])
    cached = []
    for _ in range(3):
        explainer = TransformerLRP(model)
        explainer.attribute(ids, target=1, additional_forward_args=(mask,))
        entries = list(explainer.rules.linear._splits.values())
        assert entries  # it did cache
        cached += [weakref.ref(tensor) for _, copy, split in entries for tensor in (copy, *split)]
        del explainer, entries
    gc.collect()
    assert all(tensor() is None for tensor in cached)


def test_gpt2_conv1d_and_tanh_gelu_modules():
    """GPT-2's Conv1D (``torch.addmm``) is a linear layer and its tanh-GELU module one
    elementwise operation: relevance through the whole decoder is conserved."""
    from captum_attcat.lrp import activation_modules

    model = tiny_model("gpt2")
    assert {type(m).__name__ for m in activation_modules([model])} == {"NewGELUActivation"}
    ids, mask = padded_batch([6, 4], pad=0)
    scores = TransformerLRP(model).attribute(ids, target=torch.tensor([1, 0]), additional_forward_args=(mask,))
    torch.testing.assert_close(scores.sum(1), torch.ones(2), rtol=0, atol=1e-4)
    assert scores[1, 4:].eq(0).all()


def test_an_activation_module_is_one_elementwise_operation():
    """tanh-GELU is written as pow, add, tanh and a product of two activations: op by op it
    has no rule; as a module it takes the elementwise rule, and its gradient stays exact."""
    from transformers.activations import NewGELUActivation

    act = NewGELUActivation()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    propagation = Propagation()
    with pytest.raises(NotImplementedError, match="no rule"):
        with lrp_forward(propagation):
            NewGELUActivation.forward(act, x)  # its code alone, not a module call
    with lrp_forward(propagation, [act]):
        y = act(x)
    assert "forward" not in act.__dict__  # the module is as it was ...
    with pytest.raises(RuntimeError, match="boom"):
        with lrp_forward(propagation, [act]):
            raise RuntimeError("boom")
    assert "forward" not in act.__dict__  # ... also after an error
    (grad,) = propagation.gradients(y.sum(), [x], retain_graph=True)
    (expected,) = torch.autograd.grad(act(x).sum(), x)
    torch.testing.assert_close(grad, expected)
    (relevance,) = propagation.relevance((y * 2).sum(), [x])
    torch.testing.assert_close(relevance, torch.full_like(x, 2.0))  # identity rule


def test_same_bits_compares_every_bit():
    """The weight-cache check: equal bits only (a one-ulp change, a sign of zero, NaN payloads alike)."""
    weight = torch.randn(7, 5)
    assert same_bits(weight, weight.clone())
    assert same_bits(weight.t(), weight.clone().t())  # strided views too
    changed = weight.clone()
    changed[3, 2] = torch.nextafter(changed[3, 2], torch.tensor(10.0))
    assert not same_bits(weight, changed)
    assert not same_bits(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert same_bits(torch.tensor([float("nan")]), torch.tensor([float("nan")]))
    assert not same_bits(weight, weight.double())
    assert not same_bits(weight, weight[:6])
    half = weight.to(torch.bfloat16)
    assert same_bits(half, half.clone()) and not same_bits(half, (half * 2).clone())
    # the first and the last byte of the buffer, through a transposed, an offset and a strided view
    for index in ((0, 0), (6, 4)):
        changed = weight.clone()
        changed[index] = torch.nextafter(changed[index], torch.tensor(10.0))
        for view in (lambda t: t, lambda t: t.t(), lambda t: t[2:], lambda t: t[:, ::2]):
            assert same_bits(view(weight), view(weight.clone()))
            assert same_bits(view(weight), view(changed)) == torch.equal(view(weight), view(changed))
