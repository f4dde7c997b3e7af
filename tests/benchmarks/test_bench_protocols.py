"""Each protocol preset, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from bench_toy import CLS, MASK as MASK_ID, PAD, SEP, BagModel, sigmoid

from benchmarks.metrics import Perturbation
from benchmarks.protocols import ATTCAT, MASKLRP, PAPER, Protocol, get_protocol

# One example: [CLS] t1..t9 [SEP], every content token weighs 0.5 ([PAD] 0.25), so
# logit_1 = 4.5. Attribution = position: the last tokens go first.
IDS = torch.tensor([[CLS, 1, 2, 3, 4, 5, 6, 7, 8, 9, SEP]])
MASK = torch.ones_like(IDS)
ATTR = torch.arange(11, dtype=torch.float32)[None]
# the toy tokenizer's tokens (BERT's ids); the protocol sets the steps and kinds
HOW = Perturbation(special_token_ids=(CLS, SEP, PAD), pad_token_id=PAD, mask_token_id=MASK_ID, steps=(0.5,),
                   kind="mask")


def model() -> BagModel:
    return BagModel({i: 0.5 for i in range(1, 10)})


def fwd(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return model()(ids, mask)


def delete_logit(c: int) -> float:   # c tokens deleted: 9 - c left
    return 0.5 * (9 - c)


def pad_logit(c: int) -> float:      # c tokens replaced by [PAD] (mask kept)
    return 0.5 * (9 - c) + 0.25 * c


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_paper_preset_by_hand() -> None:
    assert PAPER.steps == tuple(i / 10 for i in range(11)) and PAPER.label == "predicted"
    # predicted class 1; floor(9k) for k = 0, .1, ..., 1
    counts = [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    target = PAPER.targets(torch.tensor([0]), fwd(IDS, MASK))
    assert target.tolist() == [1]
    s = PAPER.score(fwd, IDS, MASK, ATTR, target, perturbation=HOW)
    want_aopc = sum(sigmoid(4.5) - sigmoid(delete_logit(c)) for c in counts) / 11       # signed, deletion
    want_lodds = sum(log_sigmoid(pad_logit(c)) - log_sigmoid(4.5) for c in counts) / 11  # [PAD]
    assert s.aopc.item() == pytest.approx(want_aopc, abs=1e-6)
    assert s.lodds.item() == pytest.approx(want_lodds, abs=1e-5)
    assert s.aopc_curve.shape == (1, 11)


def test_attcat_preset_by_hand() -> None:
    # true label 0; k = i/9 removes i tokens; AOPC = mean |p - p_k| with deletion; LOdds with [PAD]
    target = ATTCAT.targets(torch.tensor([0]), fwd(IDS, MASK))
    assert target.tolist() == [0]
    s = ATTCAT.score(fwd, IDS, MASK, ATTR, target, perturbation=HOW)
    want_aopc = sum(abs(sigmoid(-4.5) - sigmoid(-delete_logit(c))) for c in range(1, 10)) / 9
    want_lodds = sum(log_sigmoid(-pad_logit(c)) - log_sigmoid(-4.5) for c in range(1, 10)) / 9
    assert s.aopc.item() == pytest.approx(want_aopc, abs=1e-6)
    assert s.lodds.item() == pytest.approx(want_lodds, abs=1e-5)
    # the signed value would be negative here: the class-0 probability rises
    assert sum(sigmoid(-4.5) - sigmoid(-delete_logit(c)) for c in range(1, 10)) < 0 < s.aopc.item()


def test_masklrp_preset_by_hand() -> None:
    # true label 0; signed AOPC and LOdds, both with [PAD]
    s = MASKLRP.score(fwd, IDS, MASK, ATTR, torch.tensor([0]), perturbation=HOW)
    want_aopc = sum(sigmoid(-4.5) - sigmoid(-pad_logit(c)) for c in range(1, 10)) / 9
    want_lodds = sum(log_sigmoid(-pad_logit(c)) - log_sigmoid(-4.5) for c in range(1, 10)) / 9
    assert s.aopc.item() == pytest.approx(want_aopc, abs=1e-6)
    assert s.lodds.item() == pytest.approx(want_lodds, abs=1e-5)


def test_length_filters() -> None:
    mask = torch.tensor([[1] * 11 + [0] * 14, [1] * 9 + [0] * 16, [1] * 25, [1] * 19 + [0] * 6])
    labels = torch.tensor([1, 1, 1, 1])
    logits = torch.zeros(4, 2)
    assert PAPER.keep("sst2", mask, labels, logits).tolist() == [True, True, True, True]
    assert ATTCAT.keep("sst2", mask, labels, logits).tolist() == [True, False, True, True]   # >= 10
    assert MASKLRP.keep("sst2", mask, labels, logits).tolist() == [False, False, True, False]  # >= 20


def test_masklrp_label_and_probability_filters() -> None:
    mask = torch.ones(4, 25, dtype=torch.long)
    # QQP: label 1 only, and p(true) >= 0.3
    labels = torch.tensor([1, 0, 1, 1])
    p = torch.tensor([0.9, 0.9, 0.29, 0.31])         # probability of label 1
    logits = torch.stack([torch.zeros(4), torch.log(p / (1 - p))], 1)
    assert MASKLRP.keep("qqp", mask, labels, logits).tolist() == [True, False, False, True]
    assert ATTCAT.keep("qqp", mask, labels, logits).tolist() == [True, True, True, True]
    # MNLI: p(true) >= 0.34; uniform logits give 1/3
    labels = torch.tensor([0, 2])
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(0.35 / 0.325)]])  # p2 = .35
    assert MASKLRP.keep("mnli", mask[:2], labels, logits).tolist() == [False, True]
    assert PAPER.keep("mnli", mask[:2], labels, logits).tolist() == [True, True]


def test_explanation_masks() -> None:
    ids = torch.tensor([[CLS, 5, SEP, 6, SEP, PAD]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    assert PAPER.explanation_mask(ids, mask, CLS, SEP).tolist() == [[1, 1, 1, 1, 1, 0]]
    assert ATTCAT.explanation_mask(ids, mask, CLS, SEP).tolist() == [[0, 1, 0, 1, 0, 0]]
    assert MASKLRP.explanation_mask(ids, mask, CLS, SEP).tolist() == [[1, 1, 0, 1, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0]]   # not mutated


def test_reference_presets_use_k_over_9_and_true_labels() -> None:
    for p in (ATTCAT, MASKLRP):
        assert p.steps == tuple(i / 9 for i in range(1, 10)) and p.label == "true"
    assert ATTCAT.kendall_on == "argsort" and MASKLRP.kendall_on == "ranks" == PAPER.kendall_on
    assert get_protocol("masklrp") is MASKLRP
    assert ATTCAT.to_dict()["explain_hide"] == ["cls", "sep"]


def test_protocol_validation() -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("deyoung")
    with pytest.raises(ValueError, match="fractions"):
        Protocol(steps=(0.5, 2.0))
    with pytest.raises(ValueError, match="perturbation"):
        Protocol(aopc_perturbation="zero")  # type: ignore[arg-type]


def test_score_takes_the_tokenizers_tokens() -> None:
    with pytest.raises(TypeError, match=r"Protocol\.score\(\) needs perturbation=Perturbation\.for_tokenizer"):
        PAPER.score(fwd, IDS, MASK, ATTR, torch.tensor([1]))
    # k = 100 % with [PAD]: the 9 words replaced (logit 9 x 0.25); with exclude_special off,
    # [CLS] and [SEP] too (11 x 0.25); the protocol's steps and kind win over the given ones
    for exclude, logit in ((True, 2.25), (False, 2.75)):
        p = Protocol(name="x", steps=(1.0,), aopc_perturbation="pad", exclude_special=exclude)
        s = p.score(fwd, IDS, MASK, ATTR, torch.tensor([1]), perturbation=HOW)
        assert s.aopc_curve.shape == (1, 1)
        assert s.aopc.item() == pytest.approx(sigmoid(4.5) - sigmoid(logit), abs=1e-6)
