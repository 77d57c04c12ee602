"""Loads diffusers pipelines for the tests in a process that imports nothing of ours: stock diffusers,
as a user's script would, with a clean environment. One process serves every test (``conftest.
stock_diffusers``), so the suite pays diffusers' import once. Reads one JSON request a line on
stdin, ``{"path": ..., "prompt": ... or null, "steps": N, "guidance_scale": g}``, and answers one
JSON line on stdout: the UNet's class, the image's shape and whether it is finite (when a prompt
was given), and whether anything of ours was imported."""

import json
import sys

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline

for line in sys.stdin:
    request = json.loads(line)
    pipe = StableDiffusionXLPipeline.from_pretrained(request["path"])
    answer = {"unet": type(pipe.unet).__name__}
    if request.get("prompt"):
        image = pipe(request["prompt"], num_inference_steps=request.get("steps", 2),
                     guidance_scale=request.get("guidance_scale", 5.0),
                     generator=torch.Generator().manual_seed(0), output_type="np").images[0]
        answer |= {"shape": list(image.shape), "finite": bool(np.isfinite(image).all())}
    answer["ours_imported"] = any(m.startswith(("smpo_pipeline", "tests")) for m in sys.modules)
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
