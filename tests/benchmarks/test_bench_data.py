"""Task and file loading through the real ``datasets`` library."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from benchmarks.data import Examples, encode_batches, load_file, load_task, shared_data_dir

needs_shared = pytest.mark.skipif(not (shared_data_dir() / "mnli_textfooler1000").is_dir(),
                                  reason="../shared/data not beside the repository")


def test_sst2_vendored_dev_and_train() -> None:
    dev = load_task("sst2", "dev")
    assert len(dev) == 872 and dev.text_pairs is None
    assert Counter(dev.labels) == {0: 428, 1: 444}
    assert dev.texts[0] == "it 's a charming and often affecting journey . "
    assert dev.labels[:4] == [1, 0, 1, 1]
    assert dev.label_names == ("negative", "positive")
    assert len(load_task("sst2", "dev", limit=5)) == 5


def test_sst2_train_counts() -> None:
    train = load_task("sst2", "train")
    assert len(train) == 67349
    assert Counter(train.labels) == {0: 29780, 1: 37569}


@needs_shared
def test_mnli_pairs() -> None:
    ex = load_task("mnli")
    assert len(ex) == 1000 and ex.text_pairs is not None
    assert Counter(ex.labels) == {0: 373, 1: 311, 2: 316}      # entailment, neutral, contradiction
    assert ex.texts[2] == "Impossible ." and ex.text_pairs[2] == "Impossible , unless circumstances are met ."
    assert ex.labels[2] == 1 and ex.num_labels == 3


@needs_shared
def test_imdb_long_texts_are_truncated_to_the_model_limit() -> None:
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast(vocab=str(shared_data_dir() / "bert_base_uncased_vocab" / "vocab.txt"),
                            model_max_length=512)
    ex = load_task("imdb", limit=40)
    assert Counter(load_task("imdb").labels) == {0: 497, 1: 503}
    assert ex.texts[0].startswith("seriously , i do n't understand how justin long")
    lengths = [int(b.attention_mask.sum(1).max()) for b in encode_batches(ex, tok, 8)]
    assert max(lengths) == 512                      # some reviews are longer and were cut
    assert max(len(ids) for ids in tok(ex.texts)["input_ids"]) > 512   # untruncated


def test_unseen_tsv_with_string_labels(tmp_path: Path) -> None:
    f = tmp_path / "reviews.tsv"
    f.write_text('review\tstars\tid\nloved it "a lot"\tpos\t1\nmeh\tneg\t2\nfine\tpos\t3\n')
    ex = load_file(f, text_column="review", label_column="stars")
    assert ex.texts == ['loved it "a lot"', "meh", "fine"]   # quotes kept as written
    assert ex.labels == [1, 0, 1] and ex.label_names == ("neg", "pos")
    ex = load_file(f, "review", "stars", label_names=["pos", "neg"])
    assert ex.labels == [0, 1, 0]


def test_csv_pairs_and_jsonl(tmp_path: Path) -> None:
    c = tmp_path / "pairs.csv"
    c.write_text("premise,hypothesis,gold\nA man sleeps.,Someone rests.,0\n\"Yes, it is.\",It is not.,2\n")
    ex = load_file(c, "premise,hypothesis", "gold")
    assert ex.texts == ["A man sleeps.", "Yes, it is."] and ex.text_pairs == ["Someone rests.", "It is not."]
    assert ex.labels == [0, 2]
    j = tmp_path / "x.jsonl"
    j.write_text("\n".join(json.dumps({"t": t, "y": y}) for t, y in [("a", 1), ("b", 0)]) + "\n")
    ex = load_file(j, "t", "y")
    assert ex.texts == ["a", "b"] and ex.labels == [1, 0]


def test_missing_column_names_the_existing_ones(tmp_path: Path) -> None:
    f = tmp_path / "d.tsv"
    f.write_text("text\ty\nhello\t1\n")
    with pytest.raises(KeyError, match=r"\['sentence'\] not found; the columns are \['text', 'y'\]"):
        load_file(f, "sentence", "y")
    with pytest.raises(KeyError, match=r"\['label'\]"):
        load_file(f, "text", "label")


def test_empty_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        load_file(empty)
    header = tmp_path / "header.csv"
    header.write_text("sentence,label\n")
    with pytest.raises(ValueError, match="no examples"):
        load_file(header)
    with pytest.raises(FileNotFoundError):
        load_file(tmp_path / "nope.tsv")
    with pytest.raises(ValueError, match="format"):
        (tmp_path / "a.txt").write_text("x")
        load_file(tmp_path / "a.txt")


def test_label_outside_model_classes(tmp_path: Path) -> None:
    f = tmp_path / "d.tsv"
    f.write_text("sentence\tlabel\na\t0\nb\t3\n")
    ex = load_file(f)
    ex.check_labels(4)
    with pytest.raises(ValueError, match=r"label 3 \(row 1\) is outside the model's 2 classes"):
        ex.check_labels(2)


def test_encode_batches_pads_and_sorts(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ex = Examples("t", ["good movie", "the plot was very very boring", "fun"], None, [1, 0, 1])
    batches = list(encode_batches(ex, tok, 2))
    assert [b.indices for b in batches] == [[2, 0], [1]]      # shortest first
    b = batches[0]
    assert b.input_ids.tolist() == [tok("fun")["input_ids"] + [0], tok("good movie")["input_ids"]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert torch.equal(b.labels, torch.tensor([1, 1]))


def test_unknown_task() -> None:
    with pytest.raises(ValueError, match="built-in tasks"):
        load_task("qnli")
