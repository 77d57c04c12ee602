"""The policy a run trains and the frozen reference it is measured against.

A full fine-tune trains a copy of the base UNet against the base itself. With LoRA (peft) the
adapters of the attention projections train, and the reference is the same UNet with its adapters
switched off, so no second copy is held. Either way the result is a plain diffusers UNet.
"""

from __future__ import annotations

import copy

import torch

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections, as diffusers' LoRA scripts


class AdaptersDisabled(torch.nn.Module):
    """The LoRA policy with its adapters switched off: the frozen reference, without a second copy."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, *args, **kwargs):
        self.unet.disable_adapters()
        try:
            return self.unet(*args, **kwargs)
        finally:
            self.unet.enable_adapters()


def add_lora(unet, rank: int, alpha: float | None):
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian",
                                target_modules=list(LORA_TARGETS)))
    return unet


def merged_unet(policy):
    """A plain UNet (no peft layers) with the LoRA adapters folded into its weights."""
    merged = copy.deepcopy(policy)
    merged.fuse_lora()
    merged.unload_lora()
    return merged


def policy_and_reference(base_unet, lora_rank: int, lora_alpha: float | None, gradient_checkpointing: bool = False):
    """(policy in train mode, frozen reference). ``base_unet`` itself becomes the full-fine-tune
    reference (eval, no gradients); with LoRA it is left alone."""
    if lora_rank:
        policy = add_lora(copy.deepcopy(base_unet), lora_rank, lora_alpha).train()
        reference = AdaptersDisabled(policy)
    else:
        policy = copy.deepcopy(base_unet).train().requires_grad_(True)
        reference = base_unet.eval().requires_grad_(False)
    if gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    return policy, reference


def plain_unet(template, state: dict[str, torch.Tensor], lora_rank: int, lora_alpha: float | None):
    """A fresh fp32 copy of ``template`` holding ``state`` (the policy's weights), LoRA merged.
    A fresh module: under ZeRO-3 the policy's own tensors are empty shards."""
    result = copy.deepcopy(template).float()
    if lora_rank:
        result = add_lora(result, lora_rank, lora_alpha)
    result.load_state_dict({k: v.float() for k, v in state.items()})
    return (merged_unet(result) if lora_rank else result).eval()
