"""Captum Insights: our methods in its list, served on loopback and driven in headless Chromium.

Captum Insights exists only in captum 0.8, so these tests run in a second environment
(``pip install -e ".[insights,test]"``, see ``.ci/run``); in the main environment (captum
0.9) they skip, and the test of the install message runs instead. ``.ci/run`` sets
``CAPTUM_ATTCAT_REQUIRE_INSIGHTS=1`` in the Insights environment so they cannot skip there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from captum_attcat import METHODS, AttCAT, arguments_by_method
from captum_attcat.insights import EXAMPLE_SENTENCES, INSTALL_HINT, insights_available

import textmodels

REQUIRED = os.environ.get("CAPTUM_ATTCAT_REQUIRE_INSIGHTS") == "1"
CHROMIUM = os.environ.get("CAPTUM_ATTCAT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CAPTUM_ATTCAT_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _need(condition: bool, why: str) -> None:
    if condition:
        return
    if REQUIRED:
        pytest.fail(f"CAPTUM_ATTCAT_REQUIRE_INSIGHTS=1 but {why}")
    pytest.skip(why)


def _need_insights() -> None:
    _need(insights_available(), "Captum Insights (captum 0.8) is not installed")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("insights-model")
    textmodels.classifier(seed=3).save_pretrained(path)
    textmodels.tokenizer().save_pretrained(path)
    return path


# --- without Insights (main environment, captum 0.9) ---------------------------------------


def test_missing_insights_says_how_to_install(saved_model):
    if insights_available():
        pytest.skip("Captum Insights is installed here")
    from captum_attcat.insights import register_methods

    with pytest.raises(ImportError, match=r"pip install \"captum-attcat\[insights\]\""):
        register_methods()
    done = subprocess.run(
        [sys.executable, "-m", "captum_attcat.insights", "--model", str(saved_model)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert 'pip install "captum-attcat[insights]"' in done.stderr
    assert "removed in captum 0.9" in done.stderr and "Traceback" not in done.stderr
    assert INSTALL_HINT.splitlines()[0] in done.stderr


def test_read_tsv_reads_sst2_and_names_bad_lines(tmp_path):
    from captum_attcat.insights import read_tsv

    texts, labels = read_tsv(textmodels.SHARED / "data" / "sst2" / "dev.tsv", limit=5)
    assert len(texts) == len(labels) == 5 and set(labels) <= {0, 1}
    assert texts[0] == "it 's a charming and often affecting journey ." and labels[0] == 1
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood film\t1\nbad film\tnegative\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:3: the last column must be an integer label"):
        read_tsv(bad)


# --- with Insights (captum 0.8) --------------------------------------------------------------


def test_methods_join_insights_and_explain_like_the_library(saved_model):
    _need_insights()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from captum_attcat.insights import text_visualizer

    model = AutoModelForSequenceClassification.from_pretrained(saved_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    texts, labels = [t for t, _ in EXAMPLE_SENTENCES], [y for _, y in EXAMPLE_SENTENCES]
    plain = text_visualizer(model, tokenizer, texts, labels).get_insights_config()["methods"]
    # built without its required arguments a method would be another one: left out until given
    assert {n for n in METHODS if not METHODS[n].required_arguments} <= set(plain)
    assert not {n for n in METHODS if METHODS[n].required_arguments} & set(plain)
    with pytest.raises(ValueError, match="MaskLRP needs `head_mask`"):
        text_visualizer(model, tokenizer, texts, labels, methods=["MaskLRP"])
    visualizer = text_visualizer(model, tokenizer, texts, labels, init_kwargs=_required_arguments(model, tokenizer))
    config = visualizer.get_insights_config()
    assert set(METHODS) <= set(config["methods"])
    assert {"Integrated Gradients", "Saliency"} <= set(config["methods"])  # Captum's stay
    assert config["classes"] == ["negative", "positive"]

    visualizer._update_config({"attribution_method": "AttCAT", "arguments": {}, "prediction": "all", "classes": []})
    outputs = visualizer.visualize()
    first = outputs[0][0]
    feature = first.feature_outputs[0]
    encoding = tokenizer(texts[0], return_tensors="pt")
    assert feature.base == encoding.tokens()
    expected = AttCAT(model).attribute(
        encoding["input_ids"], target=int(first.active_index),
        additional_forward_args=(encoding["attention_mask"],),
    )[0]
    torch.testing.assert_close(torch.tensor(feature.modified), 100 * expected / expected.abs().max(), rtol=1e-4, atol=1e-3)

    for name in sorted(METHODS):  # every registered method works on the embeddings Insights passes
        visualizer._update_config({"attribution_method": name, "arguments": {}, "prediction": "all", "classes": []})
        shown = visualizer.visualize()[0][0].feature_outputs[0]
        values = torch.tensor(shown.modified)
        assert len(values) == len(shown.base) and torch.isfinite(values).all(), name
        assert values.abs().max() == pytest.approx(100.0), name


def _required_arguments(model, tokenizer) -> dict:
    """Every method's required constructor arguments, by argument: all heads kept, and two sentences
    as the reference set (as word embeddings: Insights hands the methods embeddings)."""
    from captum_attcat import HeadMask

    heads = torch.ones(model.config.num_hidden_layers, model.config.num_attention_heads)
    encoded = tokenizer([t for t, _ in EXAMPLE_SENTENCES[:2]], padding=True, return_tensors="pt")
    with torch.no_grad():
        embedded = model.get_input_embeddings()(encoded["input_ids"])
    given = {"head_mask": {"head_mask": HeadMask.from_tensor(heads)},
             "references": {"references": embedded, "reference_args": (encoded["attention_mask"],)}}
    return arguments_by_method(given)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the Insights server exited with {server.returncode}:\n{server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the Insights server did not answer {url} within {seconds} s")


def test_insights_in_headless_chromium_shows_attcat(saved_model, tmp_path):
    _need_insights()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "playwright is not installed (pip install playwright; the browser is Debian's chromium)")
    _need(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")

    port = _free_port()
    data = tmp_path / "sentences.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in EXAMPLE_SENTENCES), encoding="utf-8")
    from captum_attcat import HeadMask

    heads = tmp_path / "head_mask.json"
    HeadMask.from_tensor(torch.ones(3, 4)).save(heads)  # textmodels.classifier: 3 blocks, 4 heads
    server = subprocess.Popen(
        [sys.executable, "-m", "captum_attcat.insights", "--model", str(saved_model), "--data", str(data),
         "--port", str(port), "--head-mask", str(heads)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/init", server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
                select = page.locator("select[name=selected_method]")
                select.wait_for(timeout=30_000)
                options = select.locator("option").all_inner_texts()
                # every method but those needing an argument the command line did not give (references)
                assert {n for n in METHODS if set(METHODS[n].required_arguments) <= {"head_mask"}} <= set(options)
                assert "ContrastCAT" not in options and "Integrated Gradients" in options
                select.select_option("AttCAT")
                assert select.input_value() == "AttCAT"
                page.get_by_role("button", name="Fetch").click()
                words = page.locator("span[class*='text-feature-word']")
                words.first.wait_for(timeout=120_000)
                page.wait_for_load_state("networkidle")
                rendered = page.evaluate(
                    """() => Array.from(document.querySelectorAll("span[class*='text-feature-word']")).map(s => ({
                        token: s.firstChild.textContent,
                        label: s.querySelector("[class*='tooltip__label']")?.textContent,
                        color: getComputedStyle(s).backgroundColor}))"""
                )
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "insights_attcat.png"), full_page=True)
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(saved_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    encoding = tokenizer(EXAMPLE_SENTENCES[0][0], return_tensors="pt")
    tokens = encoding.tokens()
    # the first example's tokens are drawn, each with its own colour and AttCAT's value
    assert [r["token"] for r in rendered[: len(tokens)]] == tokens
    assert len(rendered) >= 4 * 5  # four examples of at least five tokens each
    with torch.no_grad():
        predicted = int(model(**encoding).logits.argmax())
    expected = AttCAT(model).attribute(
        encoding["input_ids"], target=predicted, additional_forward_args=(encoding["attention_mask"],)
    )[0]
    shown = torch.tensor([float(r["label"]) for r in rendered[: len(tokens)]])
    torch.testing.assert_close(shown, 100 * expected / expected.abs().max(), rtol=0, atol=2e-3)
    colours = {r["color"] for r in rendered[: len(tokens)]}
    assert len(colours) > 3  # signed, graded colours, not one flat colour
    assert (ARTIFACTS / "insights_attcat.png").stat().st_size > 10_000
