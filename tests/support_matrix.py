"""The support matrix: every registered method on tiny random models of many Hugging Face families.

Each cell explains a padded batch of two examples and checks, in float64 (float32 where a family's
kernels need it):

- the explained forward is the model's own: the logits of every pass the method runs equal the
  model's logits (a difference is a silently wrong result, never an allowed cell);
- the batch equals one example at a time, and padding scores exactly 0 (for a model whose own
  logits depend on padding, such as ConvBERT's convolutions: the batch equals each padded row alone);
- the model is left as it was (attention implementation, ``requires_grad``, no hooks).

A cell either works or fails with an exception; its first line is the cell's reason. The recorded
outcome of every cell is ``docs/support.json``; ``tests/test_support_matrix.py`` checks that each cell
still behaves as recorded, and ``python -m tests.support_matrix`` measures the matrix again, writes
``docs/support.json`` and ``docs/support.md`` and the README's table.

Example::

    $ python -m tests.support_matrix            # measure, write docs/support.* and the README table
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "docs" / "support.json"
TABLE = ROOT / "docs" / "support.md"

#: sizes of every tiny config (set where the config has the attribute)
SIZES = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
    vocab_size=100, max_position_embeddings=64, head_dim=8, num_labels=2, pad_token_id=0, bos_token_id=1,
    eos_token_id=2, image_size=32, patch_size=8, num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
    shared_expert_intermediate_size=32, embedding_size=32, pooler_hidden_size=32,
)


@dataclass(frozen=True)
class Family:
    """One row of the matrix: a model type, its head, and what its tiny config changes.

    ``settings`` make the family's own features visible at this size (soft-capping strong enough
    to change the logits, a sliding window shorter than the inputs, ...)."""

    name: str
    model_type: str
    head: str = "classification"  # or "causal-lm", "image-classification"
    settings: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.float64
    attn_implementation: str | None = None
    #: a token every example ends with (BART's classification head reads the last <eos>)
    end_token: int | None = None
    #: factor on the query and key weights: attention scores far from 0, so that what acts on them
    #: (soft-capping) changes the logits visibly
    sharpen: float = 1.0
    #: sub-configs that get the tiny sizes too (CLIP's ``vision_config``)
    nested: tuple[str, ...] = ()


FAMILIES = [
    # encoders
    Family("BERT", "bert"), Family("RoBERTa", "roberta", settings=dict(pad_token_id=1)),
    Family("XLM-R", "xlm-roberta", settings=dict(pad_token_id=1)), Family("CamemBERT", "camembert", settings=dict(pad_token_id=1)),
    Family("DistilBERT", "distilbert", settings=dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64)),
    Family("ELECTRA", "electra"), Family("ALBERT", "albert"), Family("DeBERTa", "deberta"),
    Family("DeBERTa-v2", "deberta-v2"), Family("MPNet", "mpnet"), Family("RoFormer", "roformer"),
    Family("Megatron-BERT", "megatron-bert"), Family("ModernBERT", "modernbert", settings=dict(local_attention=4)),
    Family("ERNIE", "ernie"), Family("Data2Vec-text", "data2vec-text", settings=dict(pad_token_id=1)),
    Family("ConvBERT", "convbert"), Family("BigBird", "big_bird", settings=dict(attention_type="original_full")),
    Family("ESM", "esm"), Family("RemBERT", "rembert", settings=dict(input_embedding_size=32, output_embedding_size=32)),
    Family("MobileBERT", "mobilebert"),
    # decoders, classification heads read at the last real token
    Family("GPT-2", "gpt2"), Family("Llama", "llama"), Family("Mistral", "mistral", settings=dict(sliding_window=3)),
    Family("Qwen2", "qwen2"), Family("Qwen3", "qwen3"), Family("Gemma", "gemma"),
    Family("Gemma-2", "gemma2", settings=dict(attn_logit_softcapping=0.5, final_logit_softcapping=0.5), sharpen=30),
    Family("Gemma-3", "gemma3_text", settings=dict(sliding_window=3)), Family("Phi", "phi"), Family("Phi-3", "phi3"),
    Family("GPT-NeoX", "gpt_neox"), Family("GPT-J", "gptj", settings=dict(rotary_dim=4)), Family("GPT-Neo", "gpt_neo"),
    Family("BLOOM", "bloom"), Family("Falcon", "falcon", attn_implementation="eager"), Family("MPT", "mpt"),
    Family("OPT", "opt", settings=dict(word_embed_proj_dim=32, ffn_dim=64)), Family("BioGPT", "biogpt"),
    Family("StableLM", "stablelm"), Family("Starcoder2", "starcoder2"), Family("OLMo", "olmo"),
    Family("OLMo-2", "olmo2"), Family("SmolLM3", "smollm3"), Family("Helium", "helium"), Family("GLM-4", "glm4"),
    Family("Persimmon", "persimmon"), Family("GPT-BigCode", "gpt_bigcode"),
    Family("Mixtral", "mixtral", dtype=torch.float32), Family("Qwen2-MoE", "qwen2_moe", dtype=torch.float32),
    Family("gpt-oss", "gpt_oss", dtype=torch.float32),
    # causal language models explaining the next token
    Family("Llama (causal LM)", "llama", head="causal-lm"), Family("GPT-2 (causal LM)", "gpt2", head="causal-lm"),
    Family("Gemma-2 (causal LM)", "gemma2", head="causal-lm",
           settings=dict(attn_logit_softcapping=0.5, final_logit_softcapping=0.5), sharpen=30),
    # vision transformers (images of 32 x 32 pixels in 8 x 8 patches)
    Family("ViT", "vit", head="image-classification"), Family("DeiT", "deit", head="image-classification"),
    Family("BEiT", "beit", head="image-classification"), Family("DINOv2", "dinov2", head="image-classification"),
    Family("DINOv2 (registers)", "dinov2_with_registers", head="image-classification"),
    Family("ViT-MSN", "vit_msn", head="image-classification"),
    Family("CLIP (vision)", "clip", head="image-classification", nested=("vision_config", "text_config")),
    Family("SigLIP (vision)", "siglip", head="image-classification", nested=("vision_config", "text_config")),
    Family("Swin", "swin", head="image-classification", attn_implementation="eager",
           settings=dict(embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2)),
    # encoder-decoder models
    Family("BART", "bart", end_token=2), Family("T5", "t5", end_token=2, settings=dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                        decoder_start_token_id=0)),
]

LENGTHS = (7, 5)
#: relative change of a model's own logits between the padded batch and one example alone above
#: which the model itself depends on padding
PADDING_DRIFT = 1e-12


def tiny_model(family: Family) -> torch.nn.Module:
    """A tiny random model of ``family`` in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.for_model(family.model_type)
    for target in (config, *(getattr(config, name) for name in family.nested)):
        for name, value in {**SIZES, **family.settings}.items():
            if hasattr(target, name) or name in getattr(target, "attribute_map", {}) or name in family.settings:
                try:
                    setattr(target, name, value)
                except AttributeError:  # a derived property (Falcon's head_dim)
                    pass
    if getattr(config, "architectures", []) is None:  # (DeiT's default config) what from_config reads
        config.architectures = []
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types[: config.num_hidden_layers])
    if family.attn_implementation is not None:
        config._attn_implementation = family.attn_implementation
    torch.manual_seed(0)
    if family.head == "image-classification":
        from transformers import AutoModelForImageClassification as auto
    else:
        auto = AutoModelForCausalLM if family.head == "causal-lm" else AutoModelForSequenceClassification
    model = auto.from_config(config).to(family.dtype).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(family.sharpen)
    return model


def padded_inputs(pad: int, end_token: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded examples of :data:`LENGTHS` tokens (ids 5..99, the last one ``end_token`` if
    given) and their attention mask."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.full((len(LENGTHS), max(LENGTHS)), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(LENGTHS):
        ids[row, :length] = torch.randint(5, 100, (length,), generator=generator)
        mask[row, :length] = 1
        if end_token is not None:
            ids[row, length - 1] = end_token
    return ids, mask


def _targets(family: Family) -> list:
    if family.head == "causal-lm":  # the next token after the last real one
        return [(length - 1, 7) for length in LENGTHS]
    return [0, 1]


def _head_mask(model: torch.nn.Module, inputs: torch.Tensor, args: tuple = ()) -> torch.Tensor:
    """A ``(blocks, heads)`` mask keeping every other head, as many heads as the attention has
    (ConvBERT gives half of its heads to convolutions; Swin's stages differ: the config's first)."""
    from captum_attcat import RawAttention

    explainer = RawAttention(model)
    try:
        heads = explainer.record_forward(inputs, None, args or None).attentions[0].shape[1]
    except Exception:  # the method's own error will say why
        config = explainer.adapter.config
        configs = (config, getattr(config, "vision_config", None))
        heads = next(getattr(c, n) for c in configs for n in ("num_attention_heads", "n_head", "num_heads")
                     if isinstance(getattr(c, n, None), (int, list)))
        heads = heads[0] if isinstance(heads, list) else heads
    blocks = len(explainer.adapter.blocks)
    return (torch.arange(blocks)[:, None] + torch.arange(heads)[None]) % 2 == 0


def _state(model: torch.nn.Module) -> tuple:
    # transformers installs its own output-capturing hooks once, on a model's first call that needs them
    hooks = sum(1 for m in model.modules()
                for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values(), *m._backward_hooks.values())
                if "output_capuring_hook" not in getattr(hook, "__qualname__", ""))
    return (model.config._attn_implementation, hooks, tuple(p.requires_grad for p in model.parameters()),
            sum("forward" in m.__dict__ for m in model.modules()))


class SilentlyWrong(AssertionError):
    """A cell that returned a result that is not right: never an allowed outcome."""


def run_cell(family: Family, method: str, model: torch.nn.Module | None = None) -> str:
    """``"ok"`` or the one-line reason the cell fails; raises :class:`SilentlyWrong` when it returns
    a wrong result (a forward that is not the model's own, batch differing from one-by-one,
    padding scored, the model changed)."""
    model = tiny_model(family) if model is None else model
    if family.head == "image-classification":
        return _image_cell(family, method, model)
    ids, mask = padded_inputs(model.config.pad_token_id or 0, family.end_token)
    targets = _targets(family)
    with torch.no_grad():
        own = model(input_ids=ids, attention_mask=mask)
    own_logits = own.logits
    # how far the model itself is from batch invariance (0 for most; ALiBi models in float32 masks)
    with torch.no_grad():
        alone = [model(input_ids=ids[r:r + 1, :n], attention_mask=mask[r:r + 1, :n]).logits for r, n in enumerate(LENGTHS)]
    drift = max(float((own_logits[r, n - 1] if family.head == "causal-lm" else own_logits[r]).sub(
        a[0, -1] if family.head == "causal-lm" else a[0]).abs().max() / own_logits.abs().max()) for r, (a, n) in
        enumerate(zip(alone, LENGTHS)))
    before = _state(model)
    try:
        explainer = _explainer(method, model, ids, (mask,))
        seen = _record_logits(explainer)
        batch = explainer.attribute(ids, target=targets, additional_forward_args=(mask,))
        seen_batch = list(seen)
        # a model whose own logits change with padding (ConvBERT's convolutions, ALiBi in float32 masks)
        # is compared with each padded row alone: the batch must still not mix examples
        width = {r: max(LENGTHS) if drift > PADDING_DRIFT else n for r, n in enumerate(LENGTHS)}
        singles = [explainer.attribute(ids[r:r + 1, :width[r]], target=targets[r],
                                       additional_forward_args=(mask[r:r + 1, :width[r]],))[0][:n]
                   for r, n in enumerate(LENGTHS)]
    except Exception as error:  # the cell's reason: the exception's first line
        if _state(model) != before:
            raise SilentlyWrong(f"{family.name} x {method}: the model was left changed after {error!r}") from error
        return f"{type(error).__name__}: {(str(error).splitlines() or [repr(error)])[0]}"
    if _state(model) != before:
        raise SilentlyWrong(f"{family.name} x {method}: the model was left changed")
    scale = float(own_logits.abs().max())
    for logits in seen_batch:
        if logits.shape != own_logits.shape or float((logits - own_logits).abs().max()) > 1e-6 * max(scale, 1.0):
            raise SilentlyWrong(f"{family.name} x {method}: the explained forward is not the model's own "
                                f"(logits differ by {float((logits - own_logits).abs().max()):.2e})")
    tolerance = 1e-6 if family.dtype == torch.float64 else 1e-3
    for r, (single, n) in enumerate(zip(singles, LENGTHS)):
        if not torch.isfinite(batch[r]).all():
            raise SilentlyWrong(f"{family.name} x {method}: non-finite scores")
        error = float((batch[r, :n] - single).abs().max() / single.abs().max().clamp(min=1e-30))
        if error > tolerance:
            raise SilentlyWrong(f"{family.name} x {method}: example {r} differs from one-by-one by {error:.2e}")
        # padding scores 0, unless the model itself reads it (then gradient x input rightly scores it)
        if drift <= PADDING_DRIFT and batch[r, n:].count_nonzero():
            raise SilentlyWrong(f"{family.name} x {method}: padding scored")
    return "ok"


def _explainer(method: str, model: torch.nn.Module, inputs: torch.Tensor, args: tuple = ()) -> Any:
    """The cell's explainer: the method's defaults, MaskLRP with every other head kept."""
    from captum_attcat import METHODS

    cls = METHODS[method]
    return cls(model, head_mask=_head_mask(model, inputs, args)) if method == "MaskLRP" else cls(model)


def _record_logits(explainer: Any) -> list[torch.Tensor]:
    """The logits of every forward pass the explainer runs from now on (a list it fills)."""
    seen: list[torch.Tensor] = []
    call = explainer.adapter.call

    def recording(*args: Any) -> Any:
        output = call(*args)
        seen.append(output.logits.detach())
        return output

    explainer.adapter.call = recording
    return seen


def _image_cell(family: Family, method: str, model: torch.nn.Module) -> str:
    """A cell of a vision model: two images, each explained alone too (no padding)."""
    images = torch.randn(2, 3, 32, 32, dtype=family.dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        own_logits = model(pixel_values=images).logits
    before = _state(model)
    try:
        explainer = _explainer(method, model, images)
        seen = _record_logits(explainer)
        batch = explainer.attribute(images, target=[0, 1])
        seen_batch = list(seen)
        singles = [explainer.attribute(images[r:r + 1], target=r)[0] for r in range(2)]
    except Exception as error:
        if _state(model) != before:
            raise SilentlyWrong(f"{family.name} x {method}: the model was left changed after {error!r}") from error
        return f"{type(error).__name__}: {(str(error).splitlines() or [repr(error)])[0]}"
    if _state(model) != before:
        raise SilentlyWrong(f"{family.name} x {method}: the model was left changed")
    for logits in seen_batch:
        if float((logits - own_logits).abs().max()) > 1e-6 * max(float(own_logits.abs().max()), 1.0):
            raise SilentlyWrong(f"{family.name} x {method}: the explained forward is not the model's own")
    for r, single in enumerate(singles):
        error = float((batch[r] - single).abs().max() / single.abs().max().clamp(min=1e-30))
        if batch.shape[1] != single.shape[0] or error > 1e-6 or not torch.isfinite(batch[r]).all():
            raise SilentlyWrong(f"{family.name} x {method}: image {r} differs from alone by {error:.2e}")
    return "ok"


def run_family(family: Family) -> dict[str, str]:
    """Every registered method's cell on one tiny model of ``family`` (or the reason the model cannot be built)."""
    from captum_attcat import METHODS

    try:
        model = tiny_model(family)
    except Exception as error:  # pragma: no cover - the families above all build
        return {method: f"cannot build the model: {error}".splitlines()[0] for method in METHODS}
    return {method: run_cell(family, method, model) for method in sorted(METHODS)}


def _short(reason: str) -> str:
    reason = re.sub(r"^\w+: ", "", reason)
    return reason if len(reason) <= 160 else reason[:157] + "..."


def write_table(results: dict[str, dict[str, str]]) -> str:
    """The Markdown support table (families x methods, a footnote per distinct reason)."""
    methods = sorted(next(iter(results.values())))
    reasons: list[str] = []
    lines = ["| family | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for family, cells in results.items():
        marks = []
        for method in methods:
            cell = cells[method]
            if cell == "ok":
                marks.append("✓")
            else:
                short = _short(cell)
                if short not in reasons:
                    reasons.append(short)
                marks.append(f"✗{reasons.index(short) + 1}")
        lines.append(f"| {family} | " + " | ".join(marks) + " |")
    total = sum(len(c) for c in results.values())
    working = sum(v == "ok" for c in results.values() for v in c.values())
    lines += ["", f"{working} of {total} cells work ({100 * working / total:.1f}%), {len(results)} families x "
              f"{len(methods)} methods; no cell gives a silently wrong result.", ""]
    lines += [f"{i}. {reason}" for i, reason in enumerate(reasons, 1)]
    return "\n".join(lines) + "\n"


def main() -> int:
    warnings.filterwarnings("ignore")
    from transformers.utils import logging

    logging.set_verbosity_error()
    results = {}
    for family in FAMILIES:
        results[family.name] = run_family(family)
        ok = sum(v == "ok" for v in results[family.name].values())
        print(f"{family.name}: {ok}/{len(results[family.name])}", file=sys.stderr)
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    table = write_table(results)
    TABLE.write_text("# Support matrix\n\nMeasured by `python -m tests.support_matrix` (tiny random models, "
                     "float64; see `tests/support_matrix.py` for what each cell checks).\n\n" + table)
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        readme.write_text(head + start + "\n" + table + rest[rest.index(end):])
    print(table.split("\n\n")[1] if "\n\n" in table else "", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
