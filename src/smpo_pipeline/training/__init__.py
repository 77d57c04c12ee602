"""Preference training: one step of Diffusion-DPO / SmPO on a batch of pairs (``step``). No Kedro."""
