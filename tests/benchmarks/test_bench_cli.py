"""The commands on bad input: exit status 2 and one line on standard error naming the
problem, no traceback, no result files."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from benchmarks import finetune, head_mask, run

GOOD = "text\tlabel\ngood fun\t1\nawful\t0\n"


def _cases(tmp: Path, model: Path) -> list[tuple[str, list[str], str]]:
    def data(name: str, content: bytes | str) -> str:
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    common = ["--model", str(model), "--text-column", "text", "--out", str(tmp / "out"), "--no-progress"]
    return [
        ("missing file", ["--data", str(tmp / "none.tsv"), *common], "--data .*none.tsv: no such file"),
        ("empty file", ["--data", data("empty.tsv", ""), *common], "empty"),
        ("header only", ["--data", data("header.tsv", "text\tlabel\n"), *common], "no examples"),
        ("no text column", ["--data", data("cols.tsv", "sentence\tlabel\nfun\t1\n"), *common],
         r"column\(s\) \['text'\] not found; the columns are \['sentence', 'label'\]"),
        ("no label column", ["--data", data("nolabel.tsv", "text\ty\nfun\t1\n"), *common], r"\['label'\] not found"),
        ("not utf-8", ["--data", data("latin.tsv", b"text\tlabel\ncaf\xe9\t1\n"), *common], "utf-8|decode"),
        ("label outside", ["--data", data("labels.tsv", "text\tlabel\nfun\t7\n"), *common], "label"),
        ("extension", ["--data", data("d.xlsx", GOOD), *common], "xlsx|extension|format"),
        ("method", ["--data", data("g1.tsv", GOOD), *common, "--methods", "NoSuch"], "unknown method 'NoSuch'"),
        ("protocol", ["--data", data("g2.tsv", GOOD), *common, "--protocol", "nope"], "unknown protocol 'nope'"),
        ("task", ["--task", "nope", "--model", str(model), "--no-progress", "--out", str(tmp / "out")],
         "unknown task 'nope'"),
        ("limit 0", ["--data", data("g3.tsv", GOOD), *common, "--limit", "0"], "--limit: expected a positive integer, got 0"),
        ("limit -3", ["--data", data("g4.tsv", GOOD), *common, "--limit", "-3"], "expected a positive integer"),
        ("batch 0", ["--data", data("g5.tsv", GOOD), *common, "--batch-size", "0"], "--batch-size: expected a positive"),
        ("missing model", ["--data", data("g6.tsv", GOOD), "--model", str(tmp / "no_model"), "--text-column", "text",
                           "--out", str(tmp / "out")], "--model .*no_model: no such model directory"),
        ("corrupt mask", ["--data", data("g7.tsv", GOOD), *common, "--methods", "MaskLRP",
                          "--head-mask", data("bad.json", "{not json")], "bad.json is not a head mask"),
        ("mask shape", ["--data", data("g8.tsv", GOOD), *common, "--methods", "MaskLRP", "--head-mask",
                        data("shape.json", '{"mask": [[1]], "positional": [[1]], "syntactic": [[0]]}')],
         r"the head mask has 1 blocks but the model has 2"),
    ]


def _exit_code(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's own errors
        return exit_.code


def test_run_command_on_bad_input(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    for name, argv, message in _cases(tmp_path, tiny_model_dir):
        code = _exit_code(run.main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (name, err)
        assert len(err) == 1 and err[0].startswith("python -m benchmarks.run: error: "), (name, err)
        assert re.search(message, err[0], re.I), (name, err[0])
        assert not (tmp_path / "out").exists(), name


def test_finetune_and_head_mask_commands_on_bad_input(tmp_path: Path, capsys) -> None:
    for main, argv, message in [
        (finetune.main, ["--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")], "no such model directory"),
        (finetune.main, ["--batch-size", "0"], "--batch-size: expected a positive integer"),
        (finetune.main, ["--epochs", "0"], "--epochs and --lr must be positive"),
        (head_mask.main, ["--conllu", str(tmp_path / "no.conllu"), "--out", str(tmp_path / "m.json")],
         "--conllu .*no.conllu: no such file"),
        (head_mask.main, ["--out", "m.json"], "the following arguments are required: --conllu"),
    ]:
        code = _exit_code(main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and ": error: " in err[0], (argv, err)
        assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "m.json").exists()


def test_gzip_is_read(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(GOOD)
    from benchmarks.data import load_file

    assert load_file(path, "text").labels == [1, 0]
