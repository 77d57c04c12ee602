"""The full-size SDXL architecture from its published configs (stabilityai/stable-diffusion-xl-base-1.0:
``unet/config.json``, ``text_encoder/config.json``, ``text_encoder_2/config.json``), so the real
model's shapes can be checked and benchmarked without downloading weights: ``build_sdxl(device="meta")``
allocates nothing; a GPU benchmark builds it on ``cuda`` with random weights.
"""

from __future__ import annotations

SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "cross_attention_dim": 2048, "down_block_types": ["DownBlock2D",
    "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}

# CLIP ViT-L/14's text tower (OpenAI) and OpenCLIP ViT-bigG/14's (with its projection).
SDXL_TEXT_ENCODER = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768,
}
SDXL_TEXT_ENCODER_2 = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu", "projection_dim": 1280,
}


def build_sdxl_unet(device: str = "meta", dtype=None):
    import torch
    from diffusers import UNet2DConditionModel

    # Built in ``dtype`` directly: an fp32 copy of the 2.6 B-parameter UNet first would be 10 GB.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype or previous)
    try:
        with torch.device(device):
            return UNet2DConditionModel(**SDXL_UNET)
    finally:
        torch.set_default_dtype(previous)


def build_sdxl_text_encoders(device: str = "meta"):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device(device):
        return (CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER)),
                CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2)))


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())
