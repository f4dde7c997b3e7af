"""Cost of explaining a generated response token by token, against the gradient floor and Captum.

For a tiny Llama and a tiny GPT-2 (random weights), a prompt of ``--prompt-len`` tokens and a
response of ``--response-len`` tokens (32), each measured once on the same model and input:

- ``LLMTransformerAttribution`` with AttCAT, CAT, TransAtt and MaskLRP (a head mask of half
  the heads): one forward of the prompt and the response, one backward per response token
  (two for TransAtt and MaskLRP);
- the **floor**: one forward of the same sequence plus, per response token, the gradient of
  its log-probability w.r.t. the embedding output (the least a gradient explanation sharing
  one forward costs); the forward alone and the backward per token are reported too;
- Captum's ``LLMGradientAttribution(LayerGradientXActivation(model, embeddings))``, which runs
  a forward and a backward of prompt + previous response tokens for every response token.

The floor, Captum's method, AttCAT and CAT explain the log-probability of each response token,
TransAtt and MaskLRP its logit (the wrapper's defaults). The clock is the process's CPU time with
one intra-op thread (as ``benchmarks.speed``); each number is one run after one warm-up run.

Usage::

    python -m benchmarks.speed_llm [--json docs/speed_llm.json] [--response-len 32] [--prompt-len 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import captum
import torch
import transformers
from captum.attr import LayerGradientXActivation, LLMGradientAttribution, TextTokenInput
from torch import Tensor

from captum_attcat import METHODS, TransformerAdapter, missing_arguments
from captum_attcat.llm import LLMTransformerAttribution

ARCHITECTURES = ("llama", "gpt2")
CAPTUM = "Captum LLMGradientAttribution(LayerGradientXActivation)"
#: the methods measured (a required constructor argument comes from :data:`ARGUMENTS`)
MEASURED = ("AttCAT", "CAT", "TransAtt", "MaskLRP")
WORDS = ("good great fine bad awful dull movie film plot acting the a is was not very really "
         "fun boring , . ! it this").split()


def word_tokenizer(size: int = 100, words: Sequence[str] = WORDS) -> transformers.PreTrainedTokenizerFast:
    """A fast word-level tokenizer of ``size`` entries (``<pad> <s> </s> <unk>``, ``words``
    (lower-case), then ``w0 w1 ...``), lower-casing, splitting on whitespace and punctuation and
    starting every text with ``<s>`` as Llama's tokenizer does: ids 0-3 are pad, bos, eos, unk."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    names = ["<pad>", "<s>", "</s>", "<unk>", *dict.fromkeys(words)][:size]
    names += [f"w{i}" for i in range(size - len(names))]
    backend = Tokenizer(models.WordLevel({name: i for i, name in enumerate(names)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<unk>")


def causal_lm(architecture: str, seed: int = 0, vocab_size: int = 100, hidden_size: int = 32, layers: int = 2,
              heads: int = 4, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A random Llama or GPT-2 causal language model of the given sizes, in eval mode (ids 0, 1, 2
    are pad, bos and eos)."""
    torch.manual_seed(seed)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=vocab_size)
    if architecture == "llama":
        config = transformers.LlamaConfig(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
                                          num_key_value_heads=heads // 2, intermediate_size=2 * hidden_size,
                                          max_position_embeddings=512, **ids)
        model = transformers.LlamaForCausalLM(config)
    elif architecture == "gpt2":
        config = transformers.GPT2Config(n_embd=hidden_size, n_layer=layers, n_head=heads, n_positions=512, **ids)
        model = transformers.GPT2LMHeadModel(config)
    else:
        raise ValueError(f"`architecture` must be one of {ARCHITECTURES}; got {architecture!r}")
    return model.to(dtype).eval()


def half_of_the_heads(model: torch.nn.Module) -> Tensor:
    """A ``(blocks, heads)`` head mask keeping every other head."""
    blocks = len(TransformerAdapter.from_model(model).blocks)
    heads = model.config.num_attention_heads
    return (torch.arange(blocks)[:, None] + torch.arange(heads)[None]) % 2 == 0


#: how this harness supplies each required constructor argument: argument -> its value for a model
ARGUMENTS: dict[str, Callable[[torch.nn.Module], object]] = {"head_mask": half_of_the_heads}


def shared_forward_floor(model: torch.nn.Module, ids: Tensor, prompt_len: int) -> tuple[float, float]:
    """CPU seconds of one forward of ``ids`` (prompt then response) and of the gradients of every
    response token's log-probability w.r.t. the embedding output, one backward each."""
    first_block = TransformerAdapter.from_model(model).blocks[0]
    seen: list[Tensor] = []

    def keep(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(args[0] if args else kwargs["hidden_states"])

    handle = first_block.register_forward_pre_hook(keep, with_kwargs=True)
    start = time.process_time()
    try:
        with torch.enable_grad():
            logits = model(ids[:, :-1]).logits
    finally:
        handle.remove()
    steps = ids.shape[1] - prompt_len
    scores = torch.log_softmax(logits[0, prompt_len - 1:], -1).gather(-1, ids[0, prompt_len:, None])[:, 0]
    forward = time.process_time() - start
    for t in range(steps):
        torch.autograd.grad(scores[t], seen[0], retain_graph=t < steps - 1)
    return forward, time.process_time() - start - forward


def measure(architecture: str, prompt_len: int = 32, response_len: int = 32, vocab_size: int = 8000,
            hidden_size: int = 256, layers: int = 4, heads: int = 8) -> dict:
    """Seconds of the floor, the methods through :class:`LLMTransformerAttribution` and Captum's
    ``LLMGradientAttribution``, one run each after one warm-up run, and their ratios."""
    model = causal_lm(architecture, vocab_size=vocab_size, hidden_size=hidden_size, layers=layers, heads=heads)
    tokenizer = word_tokenizer(vocab_size)
    generator = torch.Generator().manual_seed(0)
    words = [tokenizer.convert_ids_to_tokens(int(i)) for i in torch.randint(4, vocab_size, (prompt_len - 1,),
                                                                            generator=generator)]
    prompt = TextTokenInput(" ".join(words), tokenizer)
    response = torch.randint(4, vocab_size, (response_len,), generator=generator)
    ids = torch.cat([prompt.inp_tensor[0], response])[None]
    assert prompt.inp_tensor.shape[1] == prompt_len

    runners: dict[str, Callable[[], object]] = {}
    for name in MEASURED:
        arguments = {argument: ARGUMENTS[argument](model) for argument in missing_arguments(METHODS[name])}
        wrapper = LLMTransformerAttribution(METHODS[name](model, **arguments), tokenizer)
        runners[name] = lambda wrapper=wrapper: wrapper.attribute(prompt, target=response)
    captum_llm = LLMGradientAttribution(LayerGradientXActivation(model, model.get_input_embeddings()), tokenizer)
    runners[CAPTUM] = lambda: captum_llm.attribute(prompt, target=response)

    shared_forward_floor(model, ids, prompt_len)  # warm-up
    forward, backward = shared_forward_floor(model, ids, prompt_len)
    floor = forward + backward
    seconds: dict[str, float] = {}
    for name, run in runners.items():
        run()  # warm-up
        start = time.process_time()
        run()
        seconds[name] = time.process_time() - start
    return {
        "architecture": architecture,
        "sizes": dict(vocab_size=vocab_size, hidden_size=hidden_size, layers=layers, heads=heads),
        "prompt_len": prompt_len,
        "response_len": response_len,
        "floor_forward_s": forward,
        "floor_backward_per_token_s": backward / response_len,
        "floor_s": floor,
        "seconds": seconds,
        "per_token_ms": {name: 1000 * s / response_len for name, s in seconds.items()},
        "ratio_to_floor": {name: s / floor for name, s in seconds.items()},
        "ratio_to_captum": {name: s / seconds[CAPTUM] for name, s in seconds.items()},
        "per_token_in_backwards": {name: s / response_len / (backward / response_len) for name, s in seconds.items()},
    }


def table(results: list[dict]) -> str:
    """A Markdown table of :func:`measure`'s results."""
    lines = ["| model | method | s | ms per token | x floor | x Captum | per token, in floor backwards |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for result in results:
        model = (f"{result['architecture']} ({result['sizes']['layers']} blocks, hidden {result['sizes']['hidden_size']}, "
                 f"vocab {result['sizes']['vocab_size']}; {result['prompt_len']} + {result['response_len']} tokens)")
        floor_ms = 1000 * result["floor_s"] / result["response_len"]
        lines.append(f"| {model} | floor: 1 forward ({1000 * result['floor_forward_s']:.1f} ms) + 1 backward per token "
                     f"({1000 * result['floor_backward_per_token_s']:.2f} ms) | {result['floor_s']:.3f} | "
                     f"{floor_ms:.2f} | 1.00 | {result['floor_s'] / result['seconds'][CAPTUM]:.2f} | "
                     f"{result['floor_s'] / result['floor_backward_per_token_s'] / result['response_len']:.2f} |")
        for name, s in result["seconds"].items():
            lines.append(f"| | {name} | {s:.3f} | {result['per_token_ms'][name]:.2f} | "
                         f"{result['ratio_to_floor'][name]:.2f} | {result['ratio_to_captum'][name]:.2f} | "
                         f"{result['per_token_in_backwards'][name]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=Path("docs/speed_llm.json"))
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=32)
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [measure(a, args.prompt_len, args.response_len) for a in args.architectures]
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "results": results,
        "clock": "process CPU time, 1 intra-op thread, one run after one warm-up",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "captum": captum.__version__},
        "machine": platform.machine(),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
