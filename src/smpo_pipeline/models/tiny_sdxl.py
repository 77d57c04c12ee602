"""The tiny SDXL-architecture model of the embedded world, built from configs, offline.

Same component classes and conditioning as SDXL (``docs/embedded_world.md``
gives the measured settings used as defaults here):

- two CLIP text encoders: ``CLIPTextModel`` and ``CLIPTextModelWithProjection``; the UNet's
  cross-attention input is the concatenation of both penultimate hidden states (SDXL: 768 + 1280 =
  2048; here 32 + 32 = 64), the pooled embedding is the second encoder's projection;
- ``UNet2DConditionModel`` with ``addition_embed_type="text_time"``: the six ``add_time_ids``
  (original size, crop, target size) are embedded with ``addition_time_embed_dim`` each and
  concatenated with the pooled embedding (SDXL: 6·256 + 1280 = 2816; here 6·8 + 32 = 80);
- ``AutoencoderKL`` with 2× down-sampling (SDXL: 8×) and 4 latent channels;
- SDXL's noise schedule (scaled_linear, 0.00085 → 0.012, 1000 steps) and its default sampler,
  Euler with "leading" spacing; or, with ``zero_terminal_snr``, the same betas rescaled to reach
  zero signal at t = 999 with v-prediction and "trailing" spacing (Lin et al. 2024, "Common
  Diffusion Noise Schedules and Sample Steps are Flawed"), which SDXL's own classes support through
  ``rescale_betas_zero_snr``. Either way the schedule is in the scheduler's saved config.
"""

from __future__ import annotations

from dataclasses import dataclass

# SDXL's training noise schedule (its scheduler_config.json).
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
}


def make_noise_schedule(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> dict:
    """SDXL's betas with a prediction type and, with ``zero_terminal_snr``, rescaled so that
    ᾱ_999 = 0 (Lin et al. 2024, Algorithm 1; diffusers' ``rescale_betas_zero_snr``). With SDXL's
    own betas x_999 still holds √ᾱ = 7 % of the clean latent, enough on a 16×16 latent to carry the
    layout into every training input (docs/regime.md, round 12). At zero SNR the ε target is
    undefined at t = 999, hence v-prediction (Lin et al. §3.2)."""
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise ValueError("a zero-terminal-SNR schedule needs prediction_type v_prediction (ε is undefined at SNR 0)")
    return NOISE_SCHEDULE | {"prediction_type": prediction_type, "rescale_betas_zero_snr": zero_terminal_snr}


def sampling_spacing(schedule: dict) -> dict:
    """The sampler's timestep spacing for a schedule: SDXL's "leading" (offset 1), or "trailing"
    at zero terminal SNR, so that the first step starts at t = 999 from pure noise (Lin et al. §3.3)."""
    if schedule.get("rescale_betas_zero_snr"):
        return {"timestep_spacing": "trailing", "steps_offset": 0}
    return {"timestep_spacing": "leading", "steps_offset": 1}


@dataclass(frozen=True)
class TinySDXLSpec:
    """Sizes of the tiny model; defaults are the measured ones of the reference pilot."""

    resolution: int = 32
    vae_channels: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 64)
    attention_heads: int = 4
    cross_attention_dim: int = 64  # = hidden size of encoder 1 + encoder 2
    addition_time_embed_dim: int = 8
    norm_num_groups: int = 8
    text_hidden_size: int = 32
    text_layers: int = 2
    text_heads: int = 4
    projection_dim: int = 32
    max_length: int = 16

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)


def build_vae(spec: TinySDXLSpec):
    from diffusers import AutoencoderKL

    n = len(spec.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=spec.vae_channels,
        layers_per_block=1,
        latent_channels=spec.latent_channels,
        norm_num_groups=spec.norm_num_groups,
        sample_size=spec.resolution,
        force_upcast=False,
    )


def build_unet(spec: TinySDXLSpec):
    from diffusers import UNet2DConditionModel

    n = len(spec.unet_channels)
    return UNet2DConditionModel(
        sample_size=spec.latent_size,
        in_channels=spec.latent_channels,
        out_channels=spec.latent_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=spec.unet_channels,
        layers_per_block=1,
        attention_head_dim=spec.attention_heads,
        transformer_layers_per_block=1,
        cross_attention_dim=spec.cross_attention_dim,
        norm_num_groups=spec.norm_num_groups,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=spec.addition_time_embed_dim,
        projection_class_embeddings_input_dim=6 * spec.addition_time_embed_dim + spec.projection_dim,
    )


def build_text_encoders(spec: TinySDXLSpec, tokenizer):
    """(``CLIPTextModel``, ``CLIPTextModelWithProjection``) sized by ``spec`` for ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden_size,
        intermediate_size=4 * spec.text_hidden_size,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        max_position_embeddings=spec.max_length,
        projection_dim=spec.projection_dim,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config), CLIPTextModelWithProjection(config)


def build_sampling_scheduler(schedule: dict | None = None):
    """SDXL's default sampler, Euler, on a noise schedule (default: SDXL's, "leading" spacing)."""
    from diffusers import EulerDiscreteScheduler

    schedule = schedule or NOISE_SCHEDULE
    return EulerDiscreteScheduler(**schedule, **sampling_spacing(schedule))


def build_training_scheduler(schedule: dict | None = None):
    """The DDPM scheduler of a noise schedule (default: SDXL's, which new tiny models are built with)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**(schedule or NOISE_SCHEDULE))


def noise_schedule(pipe) -> dict:
    """A pipeline's own training noise schedule, read from its scheduler's config (as diffusers
    does: a model's scheduler comes with it). What fine-tuning, the inversion and DRO's sampler
    use, so a model trained on another schedule is fine-tuned on its own."""
    config = pipe.scheduler.config
    return {key: config[key] for key in NOISE_SCHEDULE if key in config}


def assemble_pipeline(vae, text_encoder, text_encoder_2, tokenizer, unet, scheduler=None):
    """A stock ``StableDiffusionXLPipeline`` of the given components (one tokenizer serves both)."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler or build_sampling_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())
