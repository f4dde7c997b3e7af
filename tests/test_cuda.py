"""The same numbers on a CUDA GPU as on the CPU (skipped where there is none): every method
(class and answer-span targets), the head statistics, the metrics and a 20-example runner."""

from __future__ import annotations

import pytest
import torch

from conftest import SHARED, padded_batch, tiny_bert

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_every_method_on_cuda_equals_the_cpu(method_case):
    model = tiny_bert()
    ids, mask = padded_batch([9, 6, 4])
    target = torch.tensor([1, 0, 2])
    cpu = method_case(model).attribute(ids, target=target, additional_forward_args=(mask,))
    model.cuda()
    gpu = method_case(model).attribute(ids.cuda(), target=target.cuda(), additional_forward_args=(mask.cuda(),))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_every_method_explains_answer_spans_on_cuda(method_case):
    from captum_attcat import AnswerSpan
    from conftest import tiny_qa_model

    model = tiny_qa_model("bert")
    ids, mask = padded_batch([9, 6, 4])
    span = AnswerSpan([2, 1, 3], [4, 5, 3])
    cpu = method_case(model).attribute(ids, target=span, additional_forward_args=(mask,))
    model.cuda()
    gpu = method_case(model).attribute(ids.cuda(), target=span, additional_forward_args=(mask.cuda(),))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_head_statistics_on_cuda():
    from transformers import BertTokenizerFast

    from captum_attcat import head_statistics, read_conllu

    tokenizer = BertTokenizerFast(str(SHARED / "data" / "bert_base_uncased_vocab" / "vocab.txt"))
    sentences = read_conllu(SHARED / "data" / "ud_english_ewt" / "en_ewt-ud-dev.conllu")[:40]
    model = tiny_bert(vocab_size=tokenizer.vocab_size, max_position_embeddings=128)
    cpu = head_statistics(model, tokenizer, sentences, progress=False)
    gpu = head_statistics(model.cuda(), tokenizer, sentences, progress=False)
    assert (cpu.offset_counts == gpu.offset_counts).all() and (cpu.relation_hits == gpu.relation_hits).all()


def test_metrics_on_cuda():
    from benchmarks.metrics import Perturbation, aopc, log_odds, precision_at_k

    model = tiny_bert()
    ids, mask = padded_batch([9, 6, 4])
    scores = torch.randn(ids.shape, generator=torch.Generator().manual_seed(0))

    def run(device):
        model.to(device)
        fwd = lambda i, m: model(input_ids=i, attention_mask=m).logits  # noqa: E731
        args = ids.to(device), scores.to(device)
        kw = dict(attention_mask=mask.to(device), perturbation=Perturbation(special_token_ids=(), pad_token_id=0))
        return (aopc(fwd, *args, 1, **kw).cpu(), log_odds(fwd, *args, 1, **kw).cpu(),
                precision_at_k(args[1], args[1], [1, 1, 1], [2, 2, 2], k=2)[0].cpu())

    for got, want in zip(run("cuda"), run("cpu")):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_runner_on_cuda(tmp_path, tiny_model_dir):
    """20 examples, every method, the model on the GPU: the CPU's table to 1e-4."""
    import json

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from benchmarks.data import load_task
    from benchmarks.protocols import PROTOCOLS
    from benchmarks.run import available_methods, evaluate_methods, select_methods

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = load_task("sst2", "dev", limit=20)
    methods = select_methods("all", available_methods())
    rows = {}
    for device in ("cpu", "cuda"):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).to(device).eval()
        rows[device] = evaluate_methods(model, tokenizer, examples, methods, PROTOCOLS["paper"], progress=False,
                                        method_kwargs={"IntegratedGradients": {"n_steps": 20}})
    for cpu, gpu in zip(rows["cpu"], rows["cuda"]):
        assert gpu.error is None, (gpu.method, gpu.error)
        assert gpu.aopc == pytest.approx(cpu.aopc, abs=1e-4) and gpu.lodds == pytest.approx(cpu.lodds, abs=1e-4)
    (tmp_path / "rows.json").write_text(json.dumps([r.row() for r in rows["cuda"]]))
