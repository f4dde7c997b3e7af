"""The methods compose with Captum's wrappers and metrics as its own methods do."""

from __future__ import annotations

import torch
from captum.attr import NoiseTunnel
from captum.metrics import infidelity

from captum_attcat import CAT, AttCAT

from conftest import padded_batch, tiny_bert


def test_noise_tunnel_on_embeddings():
    model = tiny_bert()
    ids, mask = padded_batch([6, 4])
    embeddings = model.get_input_embeddings()(ids).detach()
    for method in (AttCAT, CAT):
        explainer = method(model)
        plain = explainer.attribute(embeddings, target=1, additional_forward_args=(mask,))
        # zero noise: SmoothGrad is the mean of identical explanations
        smooth = NoiseTunnel(explainer).attribute(
            embeddings, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=1, additional_forward_args=(mask,)
        )
        torch.testing.assert_close(smooth, plain)
        noisy = NoiseTunnel(explainer).attribute(
            embeddings, nt_type="smoothgrad", nt_samples=3, stdevs=0.05, target=1, additional_forward_args=(mask,)
        )
        assert noisy.shape == plain.shape and not torch.allclose(noisy, plain)
        assert noisy[1, 4:].eq(0).all()


def test_infidelity_of_attcat():
    model = tiny_bert()
    ids, mask = padded_batch([6, 4])
    embeddings = model.get_input_embeddings()(ids).detach()
    scores = AttCAT(model).attribute(embeddings, target=1, additional_forward_args=(mask,))

    def perturb(inputs):
        noise = torch.randn_like(inputs, generator=torch.Generator().manual_seed(0)) * 0.01
        return noise, inputs - noise

    def forward(inputs, attention_mask):
        return model(inputs_embeds=inputs, attention_mask=attention_mask).logits

    value = infidelity(forward, perturb, embeddings, scores[..., None].expand_as(embeddings),
                       additional_forward_args=(mask,), target=1)
    assert value.shape == (2,) and torch.isfinite(value).all() and (value >= 0).all()
