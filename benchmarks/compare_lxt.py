"""AttnLRP against the authors' LXT package: the same relevance, and what each costs.

LXT (``pip install --no-deps lxt==2.1``) computes AttnLRP by patching a model's modules so that
input x gradient is the relevance. Its model files are written for older transformers releases, so
this script applies LXT's own rule functions (``lxt/efficient/rules.py`` and ``patches.py``, loaded
from the installed package without its model registry) to the modules of a model of the installed
transformers, as LXT's BERT and Llama files place them: LayerNorm and RMSNorm with the standard
deviation held constant, the identity rule on activations (and BERT's pooler), the uniform rule
on the attention products (query and key gradients divided by 4, value by 2) and on the gated MLP.

For each model it reports the largest relative difference to :class:`captum_attcat.AttnLRP` at the
first block's input (where AttnLRP reads relevance), the Spearman correlation of the token scores
when LXT reads them at the input embeddings as its examples do (for BERT the position and type
embeddings and the embedding LayerNorm's bias then take a share), and the CPU time of one
explanation (forward + backward, one thread) of each.

Usage::

    python -m benchmarks.compare_lxt [--sentences 100] [--json docs/compare_lxt.json]
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from captum_attcat import AttnLRP, TransformerAdapter


@functools.lru_cache(maxsize=1)
def load_lxt() -> tuple[Any, Any]:
    """LXT's ``efficient.rules`` and ``efficient.patches`` modules, loaded from the installed package
    without ``lxt.efficient``'s ``__init__`` (which imports model files of older transformers)."""
    spec = importlib.util.find_spec("lxt")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("compare_lxt: the lxt package is not installed (pip install --no-deps lxt==2.1)")
    root = Path(list(spec.submodule_search_locations)[0])
    for name in ("lxt", "lxt.efficient"):
        package = types.ModuleType(name)
        package.__path__ = [str(root / name.partition(".")[2].replace(".", "/"))] if "." in name else [str(root)]
        sys.modules.setdefault(name, package)
    loaded = []
    for name in ("rules", "patches"):
        module_spec = importlib.util.spec_from_file_location(f"lxt.efficient.{name}", root / "efficient" / f"{name}.py")
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules[f"lxt.efficient.{name}"] = module
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        loaded.append(module)
    return loaded[0], loaded[1]


def lxt_model(model: nn.Module, rules: Any, patches: Any) -> nn.Module:
    """A copy of ``model`` with LXT's AttnLRP patches on its modules and attention."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    patched = copy.deepcopy(model)
    module_of = sys.modules[type(patched).__module__]
    for module in patched.modules():
        name = type(module).__name__
        if isinstance(module, nn.LayerNorm):
            module.forward = types.MethodType(patches.layer_norm_forward, module)
        elif name.endswith("RMSNorm"):
            module.forward = types.MethodType(patches.rms_norm_forward, module)
        elif name.endswith("MLP") and hasattr(module, "gate_proj"):
            module.forward = types.MethodType(patches.gated_mlp_forward, module)
        elif name in ("GELUActivation", "Tanh"):
            module.forward = (lambda f: lambda x: rules.identity_rule_implicit(f, x))(module.forward)
    AttentionInterface.register("lxt_attnlrp", patches.wrap_attention_forward(module_of.eager_attention_forward))
    AttentionMaskInterface.register("lxt_attnlrp", eager_mask)
    patched.config._attn_implementation = "lxt_attnlrp"
    return patched


def lxt_relevance(model: nn.Module, ids: Tensor, mask: Tensor, target: int) -> tuple[Tensor, Tensor]:
    """LXT's relevance at the first block's input and at the input embeddings, ``(batch, seq)`` each."""
    first = TransformerAdapter.from_model(model).blocks[0]
    seen: list[Tensor] = []

    def leaf(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        seen.append(args[0].detach().requires_grad_())
        return (seen[-1], *args[1:]), kwargs

    embeddings = model.get_input_embeddings()(ids).detach().requires_grad_()
    handle = first.register_forward_pre_hook(leaf, with_kwargs=True)
    try:  # one pass with the block input as a leaf, one from the input embeddings
        at_block = model(input_ids=ids, attention_mask=mask).logits[:, target].sum()
    finally:
        handle.remove()
    (block_grad,) = torch.autograd.grad(at_block, seen[0])
    at_input = model(inputs_embeds=embeddings, attention_mask=mask).logits[:, target].sum()
    (input_grad,) = torch.autograd.grad(at_input, embeddings)
    return (seen[0] * block_grad).sum(-1).detach(), (embeddings * input_grad).sum(-1).detach()


def spearman(a: Tensor, b: Tensor) -> float:
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    ranks = [r - r.mean() for r in ranks]
    return float((ranks[0] * ranks[1]).sum() / (ranks[0].norm() * ranks[1].norm()))


def _cpu_seconds(fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def compare(name: str, model: nn.Module, examples: list[tuple[Tensor, Tensor]], target: int) -> dict:
    rules, patches = load_lxt()
    patched = lxt_model(model, rules, patches)
    explainer = AttnLRP(model)
    differences, correlations = [], []
    for ids, mask in examples:
        ours = explainer.attribute(ids, target=target, additional_forward_args=(mask,))[0]
        at_block, at_input = (r[0] for r in lxt_relevance(patched, ids, mask, target))
        differences.append(float((ours - at_block).abs().max() / at_block.abs().max()))
        correlations.append(spearman(ours, at_input))
    ids, mask = examples[0]

    def lxt_pass() -> None:
        embeddings = patched.get_input_embeddings()(ids).detach().requires_grad_()
        torch.autograd.grad(patched(inputs_embeds=embeddings, attention_mask=mask).logits[:, target].sum(), embeddings)

    ours_s = _cpu_seconds(lambda: explainer.attribute(ids, target=target, additional_forward_args=(mask,)))
    lxt_s = _cpu_seconds(lxt_pass)
    return {"model": name, "examples": len(examples), "max_relative_difference_at_block_input": max(differences),
            "mean_spearman_vs_lxt_at_input_embeddings": sum(correlations) / len(correlations),
            "attnlrp_seconds": ours_s, "lxt_seconds": lxt_s, "cost_ratio": ours_s / lxt_s}


def _tiny(family: str) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    sizes = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 num_labels=2)
    if family == "bert":
        return BertForSequenceClassification(BertConfig(**sizes, max_position_embeddings=40)).eval().double()
    return LlamaForSequenceClassification(LlamaConfig(**sizes, num_key_value_heads=2, pad_token_id=0)).eval().double()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_lxt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=100, help="SST-2 dev sentences for the default model")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    tiny = [(torch.randint(5, 100, (1, 12), generator=generator), torch.ones(1, 12, dtype=torch.long))
            for _ in range(10)]
    results = [compare(f"tiny {family} (float64)", _tiny(family), tiny, 1) for family in ("bert", "llama")]
    from .data import load_task
    from .run import _load_model

    model, tokenizer, _ = _load_model(None, progress=False)
    sentences = load_task("sst2", "dev").texts[: args.sentences]
    encoded = [tokenizer(s, return_tensors="pt") for s in sentences]
    results.append(compare("fine-tuned MiniLM (float32), SST-2 dev", model,
                           [(e["input_ids"], e["attention_mask"]) for e in encoded], 1))
    lines = ["| model | examples | max rel. difference at the block input | Spearman vs LXT at the input "
             "embeddings | AttnLRP s | LXT s | ratio |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['examples']} | {r['max_relative_difference_at_block_input']:.1e} | "
                     f"{r['mean_spearman_vs_lxt_at_input_embeddings']:.3f} | {r['attnlrp_seconds']:.4f} | "
                     f"{r['lxt_seconds']:.4f} | {r['cost_ratio']:.2f}x |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
