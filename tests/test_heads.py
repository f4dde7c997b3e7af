"""Head statistics and head masks: corpus reading, cases known by construction, persistence."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertTokenizerFast

from captum_attcat import HeadMask, ParsedSentence, head_statistics, read_conllu
from captum_attcat.heads import parse_conllu

from conftest import SHARED, tiny_bert

EWT = SHARED / "data" / "ud_english_ewt"

# A hand-written corpus (1-based heads, 0 = root). Word pieces of the bert-base-uncased
# vocabulary: every word is one piece except "grumpiest" = gr ##ump ##iest.
CORPUS = """\
# text = the big dog barked loudly
1\tthe\tthe\tDET\t_\t_\t3\tdet\t_\t_
2\tbig\tbig\tADJ\t_\t_\t3\tamod\t_\t_
3\tdog\tdog\tNOUN\t_\t_\t4\tnsubj\t_\t_
4\tbarked\tbark\tVERB\t_\t_\t0\troot\t_\t_
5\tloudly\tloudly\tADV\t_\t_\t4\tadvmod\t_\t_

# text = she ate red apples
1\tshe\tshe\tPRON\t_\t_\t2\tnsubj\t_\t_
2\tate\teat\tVERB\t_\t_\t0\troot\t_\t_
3\tred\tred\tADJ\t_\t_\t4\tamod\t_\t_
4\tapples\tapple\tNOUN\t_\t_\t2\tobj\t_\t_

# text = he quickly read the grumpiest book
1\the\the\tPRON\t_\t_\t3\tnsubj\t_\t_
2\tquickly\tquickly\tADV\t_\t_\t3\tadvmod\t_\t_
3\tread\tread\tVERB\t_\t_\t0\troot\t_\t_
4\tthe\tthe\tDET\t_\t_\t6\tdet\t_\t_
5\tgrumpiest\tgrumpy\tADJ\t_\t_\t6\tamod\t_\t_
6\tbook\tbook\tNOUN\t_\t_\t3\tobj\t_\t_

# text = tall grumpiest
1\ttall\ttall\tADJ\t_\t_\t2\tamod\t_\t_
2\tgrumpiest\tgrumpy\tADJ\t_\t_\t0\troot\t_\t_

"""


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(str(SHARED / "data" / "bert_base_uncased_vocab" / "vocab.txt"))


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_ewt_counts_match_stats_xml(split):
    expected = ElementTree.parse(EWT / "stats.xml").getroot().find(f"size/{split}")
    sentences = read_conllu(EWT / f"en_ewt-ud-{split}.conllu")
    assert len(sentences) == int(expected.findtext("sentences"))
    assert sum(len(s.words) for s in sentences) == int(expected.findtext("words"))


def test_vendored_dev_split_is_the_shared_one():
    """The benchmark runner's compressed copy reads as the original file."""
    from benchmarks.data import VENDORED_DIR

    vendored = read_conllu(VENDORED_DIR / "en_ewt-ud-dev.conllu.gz")
    original = read_conllu(EWT / "en_ewt-ud-dev.conllu")
    assert len(vendored) == 2001 and vendored == original


def test_multiword_tokens_and_empty_nodes_do_not_shift_alignment():
    text = (
        "1\tI\tI\tPRON\t_\t_\t4\tnsubj\t_\t_\n"
        "2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
        "2\tdo\tdo\tAUX\t_\t_\t4\taux\t_\t_\n"
        "3\tn't\tnot\tPART\t_\t_\t4\tadvmod\t_\t_\n"
        "3.1\tthink\t_\t_\t_\t_\t_\t_\t_\t_\n"
        "4\tknow\tknow\tVERB\t_\t_\t0\troot\t_\t_\n"
        "5\tit\tit\tPRON\t_\t_\t4\tobj:pass\t_\t_\n\n"
    )
    (sentence,) = parse_conllu(text)
    assert sentence.words == ("I", "do", "n't", "know", "it")
    assert sentence.governors == (3, 3, 3, -1, 3)
    assert sentence.relations == ("nsubj", "aux", "advmod", "root", "obj")


def test_bad_parses_are_rejected():
    with pytest.raises(ValueError, match="governor index 5 is outside the sentence of 2 words"):
        ParsedSentence(("a", "b"), (5, -1), ("amod", "root"))
    with pytest.raises(ValueError, match="as many governors and relations as words"):
        ParsedSentence(("a", "b"), (1,), ("amod", "root"))


# --- heads known by construction ----------------------------------------------------------


def _first_pieces(tokenizer, words) -> list[int]:
    """Position of each word's first word piece after [CLS], counted word by word."""
    positions, position = [], 1
    for word in words:
        positions.append(position)
        position += len(tokenizer.tokenize(word))
    return positions


class PatternAttention(nn.Module):
    """Two heads: head 0 attends to the previous word piece; head 1 attends from each
    dependent's first piece to its governor's first piece (looked up by the ids), else to itself."""

    def __init__(self, governor_of: dict[tuple[int, ...], dict[int, int]]) -> None:
        super().__init__()
        self.governor_of = governor_of

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, width = input_ids.shape
        probs = torch.zeros(batch, 2, width, width)
        for row in range(batch):
            length = int(attention_mask[row].sum())
            links = self.governor_of[tuple(input_ids[row, :length].tolist())]
            for query in range(width):
                probs[row, 0, query, max(query - 1, 0)] = 1.0
                probs[row, 1, query, self.key(query, links)] = 1.0
        return probs

    def key(self, query: int, links: dict[int, int]) -> int:
        """Where head 1 of ``query`` attends: its governor's first piece, else itself."""
        return links.get(query, query)


class PatternModel(nn.Module):
    def __init__(self, governor_of) -> None:
        super().__init__()
        self.attention = PatternAttention(governor_of)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.attention(input_ids, attention_mask)
        return torch.zeros(input_ids.shape[0], 2)


@pytest.fixture(scope="module")
def pattern_statistics(tokenizer):
    sentences = list(parse_conllu(CORPUS))
    governor_of = {}
    for sentence in sentences:
        ids = tuple(tokenizer(list(sentence.words), is_split_into_words=True)["input_ids"])
        first = _first_pieces(tokenizer, sentence.words)
        governor_of[ids] = {first[w]: first[g] for w, g in enumerate(sentence.governors) if g >= 0}
    model = PatternModel(governor_of)
    return head_statistics(
        model, tokenizer, sentences, batch_size=3, layers=[model.attention],
        attention_modules=[model.attention], progress=False,
    )


def test_lambda_is_the_hand_counted_best_offset(pattern_statistics):
    # nsubj: dog->barked +1, she->ate +1, he->read +2            -> offset +1, 2/3
    # amod: big->dog +1, red->apples +1, gr->book +3, tall->[gr ##ump ##iest] +1..+3 -> +1, 3/4
    # advmod: loudly->barked -1, quickly->read +1               -> 1/2
    # obj: apples->ate -2, book->read -5                          -> 1/2
    stats = pattern_statistics
    assert stats.relation_counts == {"nsubj": 3, "obj": 2, "amod": 4, "advmod": 2}
    assert stats.baseline("nsubj") == pytest.approx(2 / 3) and stats.best_offset("nsubj") == 1
    assert stats.baseline("amod") == pytest.approx(3 / 4) and stats.best_offset("amod") == 1
    assert stats.baseline("advmod") == pytest.approx(1 / 2)
    assert stats.baseline("obj") == pytest.approx(1 / 2)
    assert stats.offset_hits["amod"][stats.max_offset + 3] == 2  # gr->book and tall->##iest


def test_previous_token_head_is_positional_and_governor_head_is_syntactic(pattern_statistics):
    stats = pattern_statistics
    assert stats.queries == 5 + 4 + 8 + 4
    # head 0: every real word piece (positions >= 1) attends to offset -1
    assert stats.positional_share()[0, 0] == 1.0
    # head 1: offset +1 is its most frequent nonzero offset (dog, big, she, red, quickly, tall)
    assert stats.positional_share()[0, 1] == pytest.approx(6 / 21)
    for relation in ("nsubj", "obj", "amod", "advmod"):
        assert stats.alpha(relation)[0, 1] == 1.0
    # head 0 lands on a governor only for loudly -> barked
    np.testing.assert_allclose([stats.alpha(r)[0, 0] for r in ("nsubj", "obj", "amod", "advmod")], [0, 0, 0, 0.5])
    mask = HeadMask.from_statistics(stats)
    np.testing.assert_array_equal(mask.positional, [[True, False]])
    np.testing.assert_array_equal(mask.syntactic, [[False, True]])
    np.testing.assert_array_equal(mask.mask, [[True, True]])


def test_statistics_do_not_depend_on_batching(tokenizer):
    model = tiny_bert(vocab_size=30522)
    sentences = read_conllu(EWT / "en_ewt-ud-dev.conllu")[:12]
    one = head_statistics(model, tokenizer, sentences, batch_size=1, progress=False)
    many = head_statistics(model, tokenizer, sentences, batch_size=5, progress=False)
    np.testing.assert_array_equal(one.offset_counts, many.offset_counts)
    for relation in one.relations:
        np.testing.assert_array_equal(one.relation_hits[relation], many.relation_hits[relation])
        np.testing.assert_array_equal(one.offset_hits[relation], many.offset_hits[relation])
    assert one.queries == sum(len(tokenizer(list(s.words), is_split_into_words=True)["input_ids"]) - 2
                              for s in sentences)
    assert one.offset_counts.shape[:2] == (3, 4) and model.config._attn_implementation == "sdpa"


# --- the mask object --------------------------------------------------------------------------


def _mask() -> HeadMask:
    positional = np.zeros((3, 4), bool)
    syntactic = np.zeros((3, 4), bool)
    positional[0, 1] = positional[1, 2] = True
    syntactic[1, 2] = syntactic[2, 0] = True
    return HeadMask(positional, syntactic, thresholds={"xi_pos": 0.8, "xi_synt": 0.1})


def test_mask_variants_and_counts():
    mask = _mask()
    assert mask.mask.sum() == 3 and mask.kind == "union"
    assert mask.counts_per_block() == [
        {"positional": 1, "syntactic": 0, "both": 0, "selected": 1},
        {"positional": 1, "syntactic": 1, "both": 1, "selected": 1},
        {"positional": 0, "syntactic": 1, "both": 0, "selected": 1},
    ]
    np.testing.assert_array_equal(mask.only_positional().mask, mask.positional)
    np.testing.assert_array_equal(mask.only_syntactic().mask, mask.syntactic)
    first, again, other = mask.random(seed=3), mask.random(seed=3), mask.random(seed=4)
    assert first.mask.sum() == 3 and first.kind == "random"
    np.testing.assert_array_equal(first.mask, again.mask)
    assert any(not np.array_equal(mask.random(seed=s).mask, first.mask) for s in range(5, 10))
    assert other.thresholds["seed"] == 4
    assert mask.tensor().dtype == torch.bool and mask.tensor().shape == (3, 4)


def test_mask_json_round_trip(tmp_path):
    mask = _mask().random(seed=1)
    path = tmp_path / "mask.json"
    mask.save(path)
    loaded = HeadMask.load(path)
    for name in ("positional", "syntactic", "mask"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(mask, name))
    assert loaded.kind == "random" and loaded.thresholds == {"xi_pos": 0.8, "xi_synt": 0.1, "seed": 1}


def test_bad_masks_are_rejected():
    with pytest.raises(ValueError, match=r"`positional` must be a \(blocks, heads\) array; got shape \(4,\)"):
        HeadMask(np.zeros(4, bool), np.zeros(4, bool))
    with pytest.raises(ValueError, match=r"`positional` \(2, 4\) and `syntactic` \(3, 4\) differ"):
        HeadMask(np.zeros((2, 4), bool), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="booleans or 0/1"):
        HeadMask.from_tensor([[0, 2], [1, 0]])
    with pytest.raises(ValueError, match=r"needs the fields \['mask'\]"):
        HeadMask.from_dict({"positional": [[0]], "syntactic": [[0]]})


def test_mask_plot_marks_each_kind(tmp_path):
    figure = _mask().plot(tmp_path / "mask.png")
    kinds = figure.axes[0].images[0].get_array()
    expected = np.zeros((3, 4))
    expected[0, 1] = 1  # positional
    expected[1, 2] = 3  # both
    expected[2, 0] = 2  # syntactic
    np.testing.assert_array_equal(kinds, expected)
    assert (tmp_path / "mask.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "content, message",
    [
        (b"null", r"is not a head mask: a head mask is a JSON object .* got NoneType"),
        (b"3", r"got int"),
        (b"{\"mask\": [[1]], \"positional\": [[0]], \"syntactic\": [[1]], \"thresholds\": 5}", r"`thresholds` must be an object"),
        (b"{\"mask\": [[1]]}", r"needs the fields \['positional', 'syntactic'\]"),
        (b"{\"mask\": [[1, 2]], \"positional\": [[0, 0]], \"syntactic\": [[1, 0]]}", r"booleans or 0/1"),
        (b"{not json", r"is not a head mask: Expecting property name"),
        (b"\xff\xfe\x00", r"is not a head mask: 'utf-8' codec can't decode"),
    ],
)
def test_head_mask_load_names_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "mask.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        HeadMask.load(path)
