"""Metric values on cases worked out by hand (see bench_toy.BagModel for the model)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from bench_toy import CLS, MASK, PAD, SEP, BagModel, sigmoid

from benchmarks.metrics import (
    BERT_SPECIAL_IDS,
    PAPER_STEPS,
    ForwardCache,
    Perturbation,
    kendall_tau,
    kendall_tau_confidence,
    log_odds,
    aopc,
    perturb,
    perturbation_curve,
    precision_at_k,
    rankable_mask,
    removal_counts,
)

STEPS = (0.0, 1 / 3, 2 / 3, 1.0)

# Three examples. Weights: token 1 -> 1.0, 2 -> 2.0, 3 -> -1.0; the first token after
# [CLS] counts twice; [PAD] = 0.25, [MASK] = -0.5, [CLS]/[SEP] = 0.
IDS = torch.tensor([
    [CLS, 1, 2, 3, SEP, PAD],      # A: logit 2*1 + 2 - 1 = 3
    [CLS, 1, 2, 3, SEP, PAD],      # B: same tokens, other ranking
    [CLS, 3, 3, SEP, PAD, PAD],    # C: logit 2*(-1) - 1 = -3 -> predicted class 0
])
MASK_ = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
ATTR = torch.tensor([
    [9.0, 0.5, 3.0, 1.0, 8.0, 7.0],   # A ranks positions 2, 3, 1 (specials/pad ignored)
    [0.0, 3.0, 0.5, 1.0, 0.0, 0.0],   # B ranks positions 1, 3, 2
    [0.0, 1.0, 2.0, 0.0, 5.0, 5.0],   # C ranks positions 2, 1
])
# logit_1 after removing the top floor(k*n) tokens, k in STEPS (n = 3, 3, 2 -> counts
# [0,1,2,3], [0,1,2,3], [0,0,1,2]), worked out by hand:
LOGITS = {
    "delete": [
        [3, 1, 2, 0],          # A: [CLS 1 3 SEP] = 2-1; [CLS 1 SEP] = 2; [CLS SEP] = 0
        [3, 3, 4, 0],          # B: [CLS 2 3 SEP] = 2*2-1 (re-packed: 2 moved to position 1)
        [-3, -3, -2, 0],       # C: [CLS 3 SEP] = 2*(-1)
    ],
    "pad": [
        [3, 1.25, 2.5, 1.0],   # A: 2+.25-1; 2+.25+.25; 2*.25+.25+.25
        [3, 1.5, 2.75, 1.0],   # B: 2*.25+2-1; .5+2+.25; 1.0
        [-3, -3, -1.75, 0.75],  # C: -2+.25; 2*.25+.25
    ],
    "mask": [
        [3, 0.5, 1.0, -2.0],   # A: 2-.5-1; 2-1; -1-.5-.5
        [3, 0.0, 0.5, -2.0],   # B: -1+2-1; -1+2-.5; -2
        [-3, -3, -2.5, -1.5],  # C: -2-.5; -1-.5
    ],
}
PREDICTED = [1, 1, 0]


def how(steps=STEPS, kind=None, **options) -> Perturbation:
    """The toy vocabulary's perturbation (bench_toy: BERT's ids for [CLS], [SEP], [PAD], [MASK])."""
    return Perturbation(special_token_ids=(CLS, SEP, PAD), pad_token_id=PAD, mask_token_id=MASK, steps=steps,
                        kind=kind, **options)


def model() -> BagModel:
    return BagModel({1: 1.0, 2: 2.0, 3: -1.0}, first_token_weight=2.0)


def p_of(logit: float, cls: int) -> float:
    return sigmoid(logit) if cls == 1 else sigmoid(-logit)


def expected_aopc(mode: str, targets: list[int], absolute: bool = False) -> list[float]:
    out = []
    for row, t in zip(LOGITS[mode], targets):
        p0 = p_of(row[0], t)
        d = [p0 - p_of(l, t) for l in row]
        out.append(sum(abs(x) if absolute else x for x in d) / len(d))
    return out


def expected_lodds(mode: str, targets: list[int]) -> list[float]:
    return [sum(math.log(p_of(l, t) / p_of(row[0], t)) for l in row) / len(row)
            for row, t in zip(LOGITS[mode], targets)]


@pytest.mark.parametrize("mode", ["delete", "pad", "mask"])
def test_curve_probabilities_by_hand(mode: str) -> None:
    curve = perturbation_curve(model(), IDS, ATTR, attention_mask=MASK_, perturbation=how(kind=mode))
    assert curve.target.tolist() == PREDICTED
    assert curve.counts.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 0, 1, 2]]
    want = torch.tensor([[p_of(l, t) for l in row] for row, t in zip(LOGITS[mode], PREDICTED)])
    torch.testing.assert_close(curve.pk, want.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["delete", "pad", "mask"])
@pytest.mark.parametrize("absolute", [False, True])
def test_aopc_predicted_label(mode: str, absolute: bool) -> None:
    got = aopc(model(), IDS, ATTR, attention_mask=MASK_, perturbation=how(kind=mode), absolute=absolute)
    torch.testing.assert_close(got, torch.tensor(expected_aopc(mode, PREDICTED, absolute)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["delete", "pad", "mask"])
def test_aopc_true_label_signed_vs_absolute(mode: str) -> None:
    true = [0, 1, 1]  # A and C are explained for the class the model does not predict
    signed = aopc(model(), IDS, ATTR, true, attention_mask=MASK_, perturbation=how(kind=mode))
    absolute = aopc(model(), IDS, ATTR, true, attention_mask=MASK_, perturbation=how(kind=mode),
                    absolute=True)
    torch.testing.assert_close(signed, torch.tensor(expected_aopc(mode, true)), rtol=0, atol=1e-6)
    torch.testing.assert_close(absolute, torch.tensor(expected_aopc(mode, true, True)), rtol=0, atol=1e-6)
    assert signed[0] < 0 < absolute[0]   # A's class-0 probability rises when tokens go


@pytest.mark.parametrize("mode", ["delete", "pad", "mask"])
@pytest.mark.parametrize("targets", [None, [0, 1, 1]])
def test_log_odds(mode: str, targets: list[int] | None) -> None:
    got = log_odds(model(), IDS, ATTR, targets, attention_mask=MASK_, perturbation=how(kind=mode))
    want = expected_lodds(mode, targets or PREDICTED)
    torch.testing.assert_close(got, torch.tensor(want), rtol=0, atol=1e-5)


def test_scalar_target_applies_to_every_example() -> None:
    got = aopc(model(), IDS, ATTR, 1, attention_mask=MASK_, perturbation=how())
    torch.testing.assert_close(got, torch.tensor(expected_aopc("delete", [1, 1, 1])), rtol=0, atol=1e-6)


def test_paper_steps_default_includes_zero_and_all() -> None:
    # A with 11 steps: counts floor(3k) for k = 0, .1, ..., 1 -> 0,0,0,0,1,1,1,2,2,2,3
    curve = perturbation_curve(model(), IDS[:1], ATTR[:1], attention_mask=MASK_[:1], perturbation=how(PAPER_STEPS))
    assert curve.steps == PAPER_STEPS
    assert curve.counts.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3]]
    logits = [3, 3, 3, 3, 1, 1, 1, 2, 2, 2, 0]
    want = sum(sigmoid(3) - sigmoid(l) for l in logits) / 11
    got = aopc(model(), IDS[:1], ATTR[:1], attention_mask=MASK_[:1], perturbation=how(PAPER_STEPS))
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_special_tokens_can_be_ranked_when_asked() -> None:
    # no special tokens excluded: A's [CLS] (score 9) goes first; [1 2 3 SEP] -> 1 + 2*2 - 1 = 4
    curve = perturbation_curve(model(), IDS[:1], ATTR[:1], 1, attention_mask=MASK_[:1],
                               perturbation=Perturbation(special_token_ids=(), pad_token_id=PAD, steps=(0.2,)))
    assert curve.counts.tolist() == [[1]]
    assert curve.pk.item() == pytest.approx(sigmoid(4), abs=1e-6)


def test_exclude_mask_keeps_tokens_out_of_the_ranking() -> None:
    # position 2 excluded: ranking 3, 1; half of n=2 -> remove position 3: [CLS 1 2 SEP] = 2 + 2
    excl = torch.zeros_like(IDS[:1], dtype=torch.bool)
    excl[0, 2] = True
    curve = perturbation_curve(model(), IDS[:1], ATTR[:1], 1, attention_mask=MASK_[:1], perturbation=how((0.5,)),
                               exclude_mask=excl)
    assert curve.pk.item() == pytest.approx(sigmoid(4), abs=1e-6)


def test_perturbed_copies_go_through_in_batches() -> None:
    m = model()
    aopc(m, IDS, ATTR, attention_mask=MASK_, perturbation=how(batch_size=256))
    # one pass for the originals, one for the 3 + 3 + 2 distinct perturbed copies
    assert (m.calls, m.rows) == (2, 11)
    m = model()
    aopc(m, IDS, ATTR, attention_mask=MASK_, perturbation=how(batch_size=3))
    assert (m.calls, m.rows) == (1 + 3, 11)


def test_forward_batches_are_cut_to_their_longest_row() -> None:
    m = model()
    aopc(m, IDS, ATTR, attention_mask=MASK_, perturbation=how(kind="delete", batch_size=1))
    # originals: 5 + 5 + 4 tokens; deleted copies: A 4,3,2; B 4,3,2; C 3,2
    assert m.cells == 14 + 23
    m = model()
    aopc(m, IDS, ATTR, attention_mask=MASK_, perturbation=how(kind="pad", batch_size=1))
    assert m.cells == 14 + 3 * 5 + 3 * 5 + 2 * 4      # replacement keeps every length


def test_forward_cache_reuses_identical_inputs() -> None:
    m, cache = model(), ForwardCache()
    first = aopc(m, IDS, ATTR, attention_mask=MASK_, perturbation=how(), cache=cache)
    # distinct inputs: originals A (= B) and C; A: [CLS 1 3 SEP], [CLS 1 SEP], [CLS SEP];
    # B: [CLS 2 3 SEP], [CLS 2 SEP]; C: [CLS 3 SEP]  -> 8 forwards instead of 11
    assert m.rows == 8 and len(cache) == 8
    torch.testing.assert_close(first, torch.tensor(expected_aopc("delete", PREDICTED)), rtol=0, atol=1e-6)
    again = aopc(m, IDS, ATTR, attention_mask=MASK_, perturbation=how(), cache=cache)
    assert m.rows == 8 and torch.equal(first, again)
    # other scores for A, ranking positions 3, 1, 2: [CLS 1 2 SEP] is new (logit 2 + 2 = 4);
    # [CLS 2 SEP] (= 2*2) and [CLS SEP] are cached
    other = torch.tensor([[0.0, 2.0, 1.0, 3.0, 0.0, 0.0]])
    got = aopc(m, IDS[:1], other, attention_mask=MASK_[:1], perturbation=how(), cache=cache)
    assert m.rows == 9
    assert got.item() == pytest.approx(sum(sigmoid(3) - sigmoid(l) for l in [3, 4, 4, 0]) / 4, abs=1e-6)


def test_inputs_are_not_mutated() -> None:
    ids, mask, attr = IDS.clone(), MASK_.clone(), ATTR.clone()
    aopc(model(), ids, attr, attention_mask=mask, perturbation=how(kind="delete"))
    log_odds(model(), ids, attr, attention_mask=mask, perturbation=how(kind="mask"))
    assert torch.equal(ids, IDS) and torch.equal(mask, MASK_) and torch.equal(attr, ATTR)


def test_perturb_delete_repacks_and_fixes_mask() -> None:
    remove = torch.tensor([[False, True, False, True, False, False]])
    ids, mask = perturb(IDS[:1], MASK_[:1], remove, "delete", PAD)
    assert ids.tolist() == [[CLS, 2, SEP, PAD, PAD, PAD]]
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0]]
    ids, mask = perturb(IDS[:1], MASK_[:1], remove, "mask", PAD, MASK)
    assert ids.tolist() == [[CLS, MASK, 2, MASK, SEP, PAD]]
    assert mask.tolist() == MASK_[:1].tolist()


def test_rankable_and_counts() -> None:
    assert rankable_mask(IDS, MASK_, BERT_SPECIAL_IDS).sum(1).tolist() == [3, 3, 2]
    # k = i/9 for 9 tokens removes exactly i (no float round-down)
    assert removal_counts(torch.tensor([9]), [i / 9 for i in range(1, 10)]).tolist() == [list(range(1, 10))]
    assert removal_counts(torch.tensor([10]), [0.3, 0.7]).tolist() == [[3, 7]]


def test_errors() -> None:
    with pytest.raises(ValueError, match="attributions shape"):
        aopc(model(), IDS, ATTR[:, :4], attention_mask=MASK_, perturbation=how())
    with pytest.raises(ValueError, match="outside the model's 2 classes"):
        aopc(model(), IDS, ATTR, 2, attention_mask=MASK_, perturbation=how())
    with pytest.raises(ValueError, match="fractions"):
        how(steps=[1.5])
    with pytest.raises(ValueError, match="perturbation must be"):
        how(kind="zero")
    with pytest.raises(ValueError, match="needs mask_token_id"):
        Perturbation(special_token_ids=(CLS, SEP), pad_token_id=PAD, kind="mask")


def test_real_bert_matches_one_by_one_evaluation() -> None:
    """Batched, padded, re-packed evaluation equals unpadded one-example-at-a-time evaluation."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    bert = BertForSequenceClassification(cfg).eval()
    fwd = lambda ids, m: bert(input_ids=ids, attention_mask=m).logits  # noqa: E731
    rows = [[CLS, 5, 6, 7, 8, 9, SEP], [CLS, 11, 12, SEP], [CLS, 20, 21, 22, SEP, 30, 31, SEP]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    attr = torch.randn(ids.shape)
    steps = [0.25, 0.5, 1.0]
    for mode in ("delete", "pad"):
        curve = perturbation_curve(fwd, ids, attr, [0, 2, 1], attention_mask=mask,
                                   perturbation=how(steps, mode, batch_size=4))
        for i, (r, t) in enumerate(zip(rows, [0, 2, 1])):
            cand = [j for j, tok in enumerate(r) if tok not in (CLS, SEP)]
            order = sorted(cand, key=lambda j: (-float(attr[i, j]), j))
            for s, k in enumerate(steps):
                gone = set(order[: int(k * len(cand) + 1e-9)])
                if mode == "delete":
                    new = [tok for j, tok in enumerate(r) if j not in gone]
                else:
                    new = [PAD if j in gone else tok for j, tok in enumerate(r)]
                with torch.no_grad():
                    lp = torch.log_softmax(fwd(torch.tensor([new]), torch.ones(1, len(new), dtype=torch.long)), -1)
                assert curve.log_pk[i, s].item() == pytest.approx(lp[0, t].item(), abs=1e-5)


def test_sentence_pairs_keep_their_segment_ids() -> None:
    """A deleted token takes its segment id along; replaced tokens keep theirs; the cache tells
    two inputs apart by their segment ids too."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=3, type_vocab_size=2)
    bert = BertForSequenceClassification(cfg).eval()
    fwd = lambda ids, m, t: bert(input_ids=ids, attention_mask=m, token_type_ids=t).logits  # noqa: E731
    row, types = [CLS, 20, 21, 22, SEP, 30, 31, SEP], [0, 0, 0, 0, 0, 1, 1, 1]
    ids, tt, mask = torch.tensor([row]), torch.tensor([types]), torch.ones(1, 8, dtype=torch.long)
    attr = torch.tensor([[0.0, 0.1, 0.9, 0.2, 0.0, 0.8, 0.3, 0.0]])   # order: 21, 30, 31, 22, 20
    steps = [0.4, 0.8]                                                   # 2 and 4 of 5 removed
    for mode in ("delete", "pad"):
        curve = perturbation_curve(fwd, ids, attr, 1, attention_mask=mask, perturbation=how(steps, mode),
                                   token_type_ids=tt)
        for s, gone in enumerate([{2, 5}, {2, 5, 6, 3}]):
            if mode == "delete":
                kept = [j for j in range(8) if j not in gone]
                new, new_tt = [row[j] for j in kept], [types[j] for j in kept]
            else:
                new, new_tt = [PAD if j in gone else row[j] for j in range(8)], types
            with torch.no_grad():
                lp = torch.log_softmax(fwd(torch.tensor([new]), torch.ones(1, len(new), dtype=torch.long),
                                           torch.tensor([new_tt])), -1)
            assert curve.log_pk[0, s].item() == pytest.approx(lp[0, 1].item(), abs=1e-5)
    cache = ForwardCache()
    perturbation_curve(fwd, ids, attr, 1, attention_mask=mask, perturbation=how(steps), token_type_ids=tt,
                       cache=cache)
    perturbation_curve(fwd, ids, attr, 1, attention_mask=mask, perturbation=how(steps),
                       token_type_ids=torch.zeros_like(tt), cache=cache)
    assert cache.misses == 6 and cache.hits == 0
    with pytest.raises(ValueError, match="token_type_ids shape"):
        perturbation_curve(fwd, ids, attr, 1, attention_mask=mask, perturbation=how(), token_type_ids=tt[:, :4])


# --------------------------------------------------------------------------- the tokenizer's special tokens

BERT_VOCAB = Path(__file__).resolve().parents[3] / "shared" / "data" / "bert_base_uncased_vocab" / "vocab.txt"
TEXTS = ["the film was good , really good", "a dull plot and bad acting", "it was not fun at all !"]


def bpe_files(d: Path) -> tuple[str, str]:
    """vocab.json and merges.txt of a tiny byte-level BPE laid out as RoBERTa's: <s> = 0, <pad> = 1,
    </s> = 2, <unk> = 3, the 256 byte symbols, two merges, GPT-2's <|endoftext|>, <mask> last."""
    import json

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *symbols, "\u0120t", "\u0120th", "<|endoftext|>", "<mask>"]
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (d / "merges.txt").write_text("#version: 0.2\n\u0120 t\n\u0120t h\n")
    return str(d / "vocab.json"), str(d / "merges.txt")


def bag_forward(vocab_size: int, seed: int = 0):
    """logit_1 = sum of a random weight per token id, position 1 weighing double; logit_0 = 0."""
    w = torch.randn(vocab_size, generator=torch.Generator().manual_seed(seed))

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pos = torch.ones(ids.shape[1])
        pos[1:2] = 2.0
        logit = (w[ids] * mask.float() * pos).sum(1)
        return torch.stack([torch.zeros_like(logit), logit], 1)

    return forward


def encoded(tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_roberta_tokenizer_gets_its_own_special_tokens(tmp_path: Path) -> None:
    from transformers import RobertaTokenizerFast

    vocab, merges = bpe_files(tmp_path)
    tok = RobertaTokenizerFast(vocab=vocab, merges=merges)
    mask_id = len(tok) - 1
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == \
        (0, 1, 2, 3, mask_id)
    roberta = Perturbation.for_tokenizer(tok, steps=(0.5, 1.0))
    # <s>, <pad>, </s>, <mask>; not <unk>, which stands for a word of the text
    assert roberta.special_token_ids == (0, 1, 2, mask_id)
    assert (roberta.pad_token_id, roberta.mask_token_id, roberta.steps) == (1, mask_id, (0.5, 1.0))
    ids, mask = encoded(tok, TEXTS)
    assert (ids[:, 0] == 0).all() and (ids == 2).sum() == 3
    rankable = rankable_mask(ids, mask, roberta.special_token_ids)
    assert not rankable[ids == 2].any() and not rankable[:, 0].any()
    assert rankable.sum(1).tolist() == (mask.sum(1) - 2).tolist()
    # with BERT's ids </s> (2) would be ranked and removed like a word: the old default was wrong here
    assert rankable_mask(ids, mask, BERT_SPECIAL_IDS)[ids == 2].all()
    # at k = 100 % every word goes and only <s> </s> stay: [<s>, </s>] re-packed, <pad> after
    fwd = bag_forward(len(tok))
    attr = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1))
    curve = perturbation_curve(fwd, ids, attr, 1, attention_mask=mask, perturbation=roberta)
    empty = fwd(torch.tensor([[0, 2]]), torch.ones(1, 2, dtype=torch.long)).log_softmax(-1)[0, 1]
    torch.testing.assert_close(curve.log_pk[:, 1], empty.expand(3))
    # [PAD] replacement uses <pad> (1), not BERT's 0
    padded = perturbation_curve(fwd, ids, attr, 1, attention_mask=mask, perturbation=roberta.with_kind("pad"))
    want = fwd(torch.where(rankable, torch.ones_like(ids), ids), mask).log_softmax(-1)[:, 1]
    torch.testing.assert_close(padded.log_pk[:, 1], want)


def test_bert_tokenizer_keeps_the_old_behaviour() -> None:
    """Given BERT's tokenizer, the metrics rank and replace exactly the tokens they did with the
    old BERT defaults (special ids 0, 101, 102; [PAD] 0; [MASK] 103), [UNK] included."""
    from transformers import BertTokenizerFast

    if not BERT_VOCAB.is_file():
        pytest.skip(f"no BERT vocabulary at {BERT_VOCAB}")
    tok = BertTokenizerFast(vocab=str(BERT_VOCAB), do_lower_case=True)
    bert = Perturbation.for_tokenizer(tok, steps=STEPS)
    assert bert.special_token_ids == (0, 101, 102, 103) and (bert.pad_token_id, bert.mask_token_id) == (0, 103)
    old = Perturbation(special_token_ids=BERT_SPECIAL_IDS, pad_token_id=0, mask_token_id=103, steps=STEPS)
    ids, mask = encoded(tok, [*TEXTS, "a ☃ snowman"])
    assert (ids == tok.unk_token_id).sum() == 1  # an unknown word is still a word: ranked
    assert torch.equal(rankable_mask(ids, mask, bert.special_token_ids), rankable_mask(ids, mask, BERT_SPECIAL_IDS))
    fwd = bag_forward(tok.vocab_size)
    attr = torch.randn(ids.shape, generator=torch.Generator().manual_seed(2))
    for kind in ("delete", "pad", "mask"):
        torch.testing.assert_close(aopc(fwd, ids, attr, 1, attention_mask=mask, perturbation=bert.with_kind(kind)),
                                   aopc(fwd, ids, attr, 1, attention_mask=mask, perturbation=old.with_kind(kind)),
                                   rtol=0, atol=0)
    torch.testing.assert_close(log_odds(fwd, ids, attr, attention_mask=mask, perturbation=bert),
                               log_odds(fwd, ids, attr, attention_mask=mask, perturbation=old), rtol=0, atol=0)


def test_special_tokens_are_never_assumed(tmp_path: Path) -> None:
    from transformers import GPT2TokenizerFast

    ids, attr = IDS[:1], ATTR[:1]
    for call in (lambda: aopc(model(), ids, attr, attention_mask=MASK_[:1]),
                 lambda: log_odds(model(), ids, attr, attention_mask=MASK_[:1]),
                 lambda: perturbation_curve(model(), ids, attr, attention_mask=MASK_[:1]),
                 lambda: kendall_tau_confidence(explain, ids, [1], 2, attention_mask=MASK_[:1])):
        with pytest.raises(TypeError, match=r"needs perturbation=Perturbation\.for_tokenizer\(tokenizer\)"):
            call()
    with pytest.raises(TypeError, match="must be a Perturbation"):
        aopc(model(), ids, attr, perturbation="delete")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"needs special_token_ids.*Perturbation\.for_tokenizer\(tokenizer\)"):
        Perturbation(special_token_ids=None, pad_token_id=0)  # type: ignore[arg-type]
    # GPT-2: <|endoftext|> is bos, eos and unk at once: special; no pad token: say which argument to give
    vocab, merges = bpe_files(tmp_path)
    gpt2 = GPT2TokenizerFast(vocab=vocab, merges=merges)
    with pytest.raises(ValueError, match="GPT2Tokenizer(Fast)? has no pad token: pass pad_token_id="):
        Perturbation.for_tokenizer(gpt2)
    eos = gpt2.eos_token_id
    got = Perturbation.for_tokenizer(gpt2, pad_token_id=eos)
    assert eos in got.special_token_ids and got.pad_token_id == eos and got.mask_token_id is None


# --------------------------------------------------------------------------- Kendall tau

def test_kendall_tau_ranks_vs_argsort_by_hand() -> None:
    a, b = [0.1, 0.4, 0.3, 0.2], [0.4, 0.1, 0.2, 0.3]
    # ranks: all 6 pairs discordant -> -1
    assert kendall_tau(a, b, "ranks") == pytest.approx(-1.0)
    # argsort(a) = [0,3,2,1], argsort(b) = [1,2,3,0]: 4 concordant, 2 discordant -> 1/3
    assert kendall_tau(a, b, "argsort") == pytest.approx(1 / 3)
    assert math.isnan(kendall_tau([1.0], [2.0]))


SCORES = {  # per class: score of tokens 1..4
    0: {1: 0.4, 2: 0.1, 3: 0.2, 4: 0.3},
    1: {1: 0.1, 2: 0.4, 3: 0.3, 4: 0.2},
    2: {1: 0.1, 2: 0.4, 3: 0.3, 4: 0.2},
}


def explain(ids: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = torch.full(ids.shape, 5.0)  # specials and padding get large scores: must be ignored
    for i in range(ids.shape[0]):
        for j in range(ids.shape[1]):
            tok = int(ids[i, j])
            if tok in SCORES[int(target[i])]:
                out[i, j] = SCORES[int(target[i])][tok]
    return out


@pytest.mark.parametrize("on,two,three", [("ranks", -1.0, 0.0), ("argsort", 1 / 3, 2 / 3)])
def test_kendall_tau_confidence(on: str, two: float, three: float) -> None:
    ids = torch.tensor([[CLS, 1, 2, 3, 4, SEP, PAD]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    # two classes: tau(class 1, class 0)
    got = kendall_tau_confidence(explain, ids, [1], 2, attention_mask=mask, on=on,  # type: ignore[arg-type]
                                 perturbation=how())
    assert got.item() == pytest.approx(two)
    # three classes: mean of tau(1, 2) = 1 and tau(1, 0)
    got = kendall_tau_confidence(explain, ids, [1], 3, attention_mask=mask, on=on,  # type: ignore[arg-type]
                                 perturbation=how())
    assert got.item() == pytest.approx(three)


# --------------------------------------------------------------------------- Precision@K

def test_precision_at_k_by_hand() -> None:
    start = torch.tensor([[0.0, 5.0, 1.0, 0.0, 0.0, 9.0], [1.0, 0.0, 3.0, 2.0, 0.0, 0.0]])
    end = torch.tensor([[0.0, 0.0, 4.0, 2.0, 0.0, 9.0], [0.0, 0.0, 0.0, 0.0, 0.0, 4.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    # row 0: sums [0,5,5,2,0,-]; answer 2..3. top2 = {1,2} -> 1 of 2; top3 adds 3 -> 2 of 2
    # row 1: sums [1,0,3,2,0,4]; answer 1..3 (3 tokens). top2 = {5,2} -> 1; top3 adds 3 -> 2
    count, pct = precision_at_k(start, end, [2, 1], [3, 3], k=2, attention_mask=mask)
    assert count.tolist() == [1, 1]
    torch.testing.assert_close(pct, torch.tensor([50.0, 100 / 3]))
    count, pct = precision_at_k(start, end, [2, 1], [3, 3], k=3, attention_mask=mask)
    assert count.tolist() == [2, 2]
    torch.testing.assert_close(pct, torch.tensor([100.0, 200 / 3]))
    # without the mask the padding position (score 18) would take a top-2 slot
    count, _ = precision_at_k(start, end, [2, 1], [3, 3], k=2)
    assert count.tolist() == [0, 1]
    with pytest.raises(ValueError, match="span"):
        precision_at_k(start, end, [3, 1], [2, 3])
