"""The DDIM sampler as diffusion.py had it before temporal masks and DPM-Solver++ (commit 436d571), kept
verbatim in its arithmetic as the reference that the new sampler must equal bit for bit on whole-modality
conditions (tests/test_samplers.py)."""
import math
from contextlib import nullcontext

import torch

from diffusion import randn as _randn
from modalities import MODALITIES
from sampling import grads as _grads


@torch.no_grad()
def legacy_sample(d, model, shapes, *, cond=None, steps=200, guidance=0.0, guidance_form="cmmd", eta_ddim=0.0,
                  clip_x0=False, generator=None):
    cond = dict(cond or {})
    gen = [k for k in MODALITIES if k in shapes and k not in cond]
    shapes = {k: tuple(cond[k].shape) if k in cond else tuple(shapes[k]) for k in MODALITIES if k in cond or k in gen}
    B = next(iter(shapes.values()))[0]
    device, dtype = ((next(iter(cond.values())).device, next(iter(cond.values())).dtype) if cond
                     else ("cpu", torch.float32))
    noise = {k: _randn(shapes[k], generator, device, dtype) for k in shapes}
    x = {k: noise[k] for k in gen}
    ts = d.timesteps(steps)
    abar = d.alphas_cumprod.tolist()
    guided = guidance > 0
    for i, n in enumerate(ts):
        ab, ab_prev = abar[n], (abar[ts[i + 1]] if i + 1 < len(ts) else 1.0)
        sa, s1a = math.sqrt(ab), math.sqrt(1 - ab)
        for k in cond:
            x[k] = sa * cond[k] + s1a * noise[k]
        n_b = torch.full((B,), n, dtype=torch.long, device=device)
        with torch.enable_grad() if guided else nullcontext():
            x_in = {k: x[k].detach().requires_grad_(guided and k in gen) for k in shapes}
            out = model(x_in, n_b)
            x0, eps = {}, {}
            for k in shapes:
                x0[k], eps[k] = d.x0_eps(x_in[k], out[k], sa, s1a)
            if guided and guidance_form == "cmmd":
                err = sum((cond[k] - x0[k]).pow(2).sum() for k in cond)
                grads = _grads(err, [x_in[k] for k in gen])
                for k, g in zip(gen, grads):
                    x0[k] = x0[k] - guidance * sa * g
                    eps[k] = (x_in[k] - sa * x0[k]) / s1a
            if clip_x0:
                for k in shapes:
                    x0[k] = x0[k].clamp(-1, 1)
                    eps[k] = (x_in[k] - sa * x0[k]) / s1a
            sigma = eta_ddim * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
            step = gen + (list(cond) if guided and guidance_form == "mmdiffusion" else [])
            c0, c_eps = math.sqrt(ab_prev), math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
            x_prev = {k: c0 * x0[k] + c_eps * eps[k] for k in step}
            if guided and guidance_form == "mmdiffusion" and i + 1 < len(ts):
                sa_p, s1a_p = math.sqrt(ab_prev), math.sqrt(1 - ab_prev)
                err = sum((x_prev[k] - (sa_p * cond[k] + s1a_p * noise[k])).pow(2).flatten(1).mean(1).sum()
                          for k in cond)
                grads = _grads(err, [x_in[k] for k in gen])
                for k, g in zip(gen, grads):
                    x_prev[k] = x_prev[k] - guidance * sa * g
        for k in gen:
            x[k] = x_prev[k].detach()
            if eta_ddim > 0:
                x[k] = x[k] + sigma * _randn(shapes[k], generator, device, dtype)
    return {k: cond[k] if k in cond else x[k] for k in shapes}
