"""Shared fixtures and helpers: the reference case, tiny Hugging Face models built from
configs, every registered method as a test case, and the model-state snapshot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

pytest_plugins = ["pytester"]

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "reference" / "bert_tiny_case1"


@pytest.fixture(scope="session")
def reference() -> dict:
    """The reference input and the vectors the authors' code produced on it."""
    return json.loads((REFERENCE / "expected.json").read_text())


@pytest.fixture(scope="session")
def reference_model() -> BertForSequenceClassification:
    return BertForSequenceClassification.from_pretrained(REFERENCE, attn_implementation="eager").eval()


def tiny_bert(attn_implementation: str = "sdpa", seed: int = 0, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, num_labels=3,
    )
    config = BertConfig(attn_implementation=attn_implementation, **{**settings, **overrides})
    return BertForSequenceClassification(config).eval()


def tiny_model(family: str, seed: int = 0):
    """A tiny random model of one of the architectures the adapters know."""
    torch.manual_seed(seed)
    common = dict(vocab_size=100, num_labels=2)
    if family == "bert":
        return tiny_bert(seed=seed)
    if family == "roberta":
        config = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=42, pad_token_id=1, **common)
        return RobertaForSequenceClassification(config).eval()
    if family == "distilbert":
        config = DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                  max_position_embeddings=40, **common)
        return DistilBertForSequenceClassification(config).eval()
    if family == "electra":
        config = ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=40, **common)
        return ElectraForSequenceClassification(config).eval()
    if family == "gpt2":  # a decoder: causal attention, the score read at the last real token
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=40, pad_token_id=0,
                            bos_token_id=0, eos_token_id=0, **common)
        return GPT2ForSequenceClassification(config).eval()
    raise ValueError(family)


def tiny_qa_model(family: str, seed: int = 0):
    """A tiny random extractive question-answering model (start and end logits per token)."""
    from transformers import (BertForQuestionAnswering, DistilBertForQuestionAnswering, GPT2ForQuestionAnswering,
                              RobertaForQuestionAnswering)

    torch.manual_seed(seed)
    if family == "bert":
        config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=40)
        return BertForQuestionAnswering(config).eval()
    if family == "roberta":
        config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=42, pad_token_id=1)
        return RobertaForQuestionAnswering(config).eval()
    if family == "distilbert":
        config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                  max_position_embeddings=40)
        return DistilBertForQuestionAnswering(config).eval()
    if family == "gpt2":
        config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=40, pad_token_id=0,
                            bos_token_id=0, eos_token_id=0)
        return GPT2ForQuestionAnswering(config).eval()
    raise ValueError(family)


def padded_batch(lengths: list[int], vocab: int = 100, pad: int = 0, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (right-padded with ``pad``) and the attention mask for examples of ``lengths``."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(5, vocab, (length,), generator=generator)
        mask[row, :length] = 1
    return ids, mask


# --- every method, as the guarantee tests run it ------------------------------------------


def num_heads(model: torch.nn.Module) -> int:
    config = model.config
    for name in ("num_attention_heads", "n_heads", "n_head"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(f"no head count in {type(config).__name__}")


def checkered_head_mask(model: torch.nn.Module) -> torch.Tensor:
    """A ``(blocks, heads)`` keep-mask with half of the heads of every block."""
    from captum_attcat import TransformerAdapter

    blocks = len(TransformerAdapter.from_model(model).blocks)
    return (torch.arange(blocks)[:, None] + torch.arange(num_heads(model))[None]) % 2 == 0


def reference_set(model: torch.nn.Module) -> dict:
    """ContrastCAT's reference set: five padded random sentences, the four of lowest confidence used."""
    ids, mask = padded_batch([9, 5, 12, 7, 10], pad=model.config.pad_token_id or 0, seed=5)
    return {"references": ids, "reference_args": (mask,), "n_references": 4}


#: constructor arguments of method variants the guarantee tests run besides each method's defaults
METHOD_VARIANTS: dict[str, dict[str, Callable[[torch.nn.Module], dict]]] = {
    "MaskLRP": {
        "head_mask": lambda model: {"head_mask": checkered_head_mask(model)},
        "renormalize": lambda model: {"head_mask": checkered_head_mask(model), "renormalize": True},
    },
    "ContrastCAT": {"references": reference_set},
}


def method_cases() -> list[tuple[str, Callable[..., Any]]]:
    """``(id, make(model, explicit=False) -> explainer)`` for every entry of ``METHODS`` as
    registered now (so a method added later is covered without editing a list), plus the
    variants. ``explicit=True`` builds Captum's explicit form on a plain function of the
    model, with the blocks and attention modules the automatic form finds."""
    from captum_attcat import METHODS, TransformerAdapter

    def maker(cls: type, arguments: Callable[[torch.nn.Module], dict]) -> Callable[..., Any]:
        def make(model: torch.nn.Module, explicit: bool = False) -> Any:
            if not explicit:
                return cls(model, **arguments(model))
            adapter = TransformerAdapter.from_model(model)
            forward = lambda ids, mask=None: model(input_ids=ids, attention_mask=mask).logits  # noqa: E731
            return cls(forward, layers=adapter.blocks, attention_modules=adapter.attention_modules,
                       **arguments(model))

        return make

    cases = []
    for name, cls in sorted(METHODS.items()):
        cases.append((name, maker(cls, lambda model: {})))
        for variant, arguments in METHOD_VARIANTS.get(name, {}).items():
            cases.append((f"{name}[{variant}]", maker(cls, arguments)))
    return cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test asking for ``method_case`` runs once per entry of :func:`method_cases`."""
    if "method_case" in metafunc.fixturenames:
        cases = method_cases()
        metafunc.parametrize("method_case", [make for _, make in cases], ids=[name for name, _ in cases])


# --- the model is left exactly as it was -------------------------------------------------


def snapshot(model: torch.nn.Module) -> dict:
    """Everything an explanation must leave as it was: modes, flags, gradients, weights, hooks."""
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.named_parameters()},
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            + len(m._forward_hooks_with_kwargs) + len(m._forward_pre_hooks_with_kwargs)
            for m in model.modules()
        ),
        "forwards": sum("forward" in m.__dict__ for m in model.modules()),
        "attn": model.config._attn_implementation,
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"] == 0
    assert after["forwards"] == before["forwards"] == 0
    assert after["attn"] == before["attn"]
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, name
        else:
            assert torch.equal(after["grads"][name], grad), name
    for name, value in before["params"].items():
        assert torch.equal(after["params"][name], value), name


def unusual_model() -> torch.nn.Module:
    """Train mode, one frozen weight, one existing .grad: all must survive."""
    model = tiny_bert(attn_implementation="sdpa").train()
    model.bert.encoder.layer[0].attention.self.query.weight.requires_grad_(False)
    model.classifier.weight.grad = torch.full_like(model.classifier.weight, 0.5)
    return model


# --- a tiny saved Hugging Face classifier ---------------------------------------------------

WORDS = ("good great fine bad awful dull movie film plot acting the a is was not very really "
         "fun boring , . ! it this").split()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised BERT classifier + WordPiece tokenizer saved as a HF model dir."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(d / "vocab.txt"), do_lower_case=True, model_max_length=32)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=2,
                     pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d
