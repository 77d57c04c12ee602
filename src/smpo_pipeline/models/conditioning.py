"""SDXL conditioning exactly as ``StableDiffusionXLPipeline`` computes it, usable with gradients.

The pipeline's own ``encode_prompt`` runs under its callers' ``no_grad`` and mixes in CFG; training
needs the same tensors with gradients flowing into the text encoders (the tiny base model trains
them, see ``docs/embedded_world.md``). ``tests/test_models.py`` checks that these
functions return exactly what the pipeline returns.
"""

from __future__ import annotations


def tokenize(tokenizer, prompts: list[str]):
    """Pad/truncate to the tokenizer's ``model_max_length``, as the pipeline does."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompts(tokenizers, text_encoders, prompts: list[str]):
    """(prompt_embeds [B, L, D1+D2], pooled_prompt_embeds [B, P]).

    Penultimate hidden state of each encoder, concatenated on the feature axis; the pooled
    embedding is the projected output of the last encoder (SDXL's ``text_embeds``).
    """
    import torch

    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenize(tokenizer, prompts).to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def time_ids(resolution: int, batch_size: int, dtype=None, device=None):
    """SDXL micro-conditioning for an un-cropped square image: (H, W, 0, 0, H, W) per row."""
    import torch

    row = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=dtype, device=device)
    return row.expand(batch_size, 6).clone()


def drop_captions(prompt_embeds, pooled, drop_mask):
    """Caption dropout the way the pipeline's unconditional branch looks with
    ``force_zeros_for_empty_prompt=True``: zeroed prompt and pooled embeddings (pitfall 2)."""
    keep = (~drop_mask).to(prompt_embeds.dtype)
    return prompt_embeds * keep[:, None, None], pooled * keep[:, None]
