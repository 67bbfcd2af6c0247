"""diffusion.py's guidance_form="mmdiffusion" against the official MM-Diffusion sampler (researchmm/MM-Diffusion,
mm_diffusion/multimodal_gaussian_diffusion.py, imported from ../shared/reference/mm-diffusion, never copied):
the gradient-guided zero-shot sampler `conditional_p_sample_loop_progressive_scale` (its lines 722-819), on the
same ε-predictions and the same noise. Skipped, with the reason, without that folder.

The official loop is DDPM (p_sample, lines 415-474): ours with eta_ddim=1 is DDPM with the posterior variance β̃,
the official ModelVarType.FIXED_SMALL (lines 299-301); its released scripts run FIXED_LARGE (β), which no η ≤ 1
gives. Its random draws are matched by handing both samplers the same start noise and serving its per-step
th.randn_like (lines 453-454: video, then audio) from our generator, in the order diffusion.py documents.
"""
import sys
import types

import pytest
import torch

import mmunet  # noqa: F401  (registers the "mmdiffusion" guidance form)
from conftest import SHARED, shared_file
from diffusion import Diffusion
from sampling import sample
from test_diffusion import LINEAR_EPS, SHAPES, Coupled

REF = SHARED / "reference" / "mm-diffusion"
B = SHAPES["video"][0]  # 2: the official batch mean (line 815) is seen
OTHER = {"video": "audio", "audio": "video"}


@pytest.fixture(scope="module")
def official():
    """The official diffusion module and its respacing, with `dist_util` stubbed as SOURCE.txt says."""
    shared_file(REF / "mm_diffusion" / "multimodal_gaussian_diffusion.py")
    pytest.importorskip("einops", reason="the official MM-Diffusion code needs einops (requirements-test.txt)")
    sys.path.insert(0, str(REF))
    stub = types.ModuleType("mm_diffusion.dist_util")
    stub.dev = lambda: torch.device("cpu")
    sys.modules.setdefault("mm_diffusion.dist_util", stub)
    from mm_diffusion import multimodal_gaussian_diffusion as gd
    from mm_diffusion import multimodal_respace as respace
    return gd, respace


def official_sample(official, model, cond, steps, seed, class_scale, use_fp16, clip):
    """conditional_p_sample_loop with class_scale > 0 (lines 584-639 -> 722-819) at the official "ddimS" respacing
    (multimodal_respace.py:28-36), DDPM with β̃, ε-prediction; start noise and each step's draws from `seed`."""
    gd, respace = official
    spaced = respace.SpacedDiffusion(use_timesteps=respace.space_timesteps(1000, f"ddim{steps}"),
                                     betas=gd.get_named_beta_schedule("linear", 1000),
                                     model_mean_type=gd.ModelMeanType.EPSILON,
                                     model_var_type=gd.ModelVarType.FIXED_SMALL, loss_type=gd.LossType.MSE)
    g = torch.Generator().manual_seed(seed)
    noise = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}  # our first draws: video, then audio

    def randn_like(x, **_):  # p_sample's per-step draws (lines 453-454), served in our order
        return torch.randn(x.shape, generator=g, dtype=x.dtype)

    def net(video, audio, t):  # the official call convention (line 261); t is already the original step
        out = model({"video": video, "audio": audio}, t)
        return out["video"], out["audio"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gd.th, "randn_like", randn_like)
        out = spaced.conditional_p_sample_loop(net, SHAPES, use_fp16, noise=noise, clip_denoised=clip,
                                               model_kwargs=dict(cond), device=torch.device("cpu"),
                                               progress=False, class_scale=class_scale)
    return {k: v.detach() for k, v in out.items()}, spaced.timestep_map


@pytest.mark.parametrize("known", ["video", "audio"])
@pytest.mark.parametrize("clip,use_fp16", [(False, False), (True, True)])
def test_mmdiffusion_guidance_equals_the_official_sampler(official, known, clip, use_fp16):
    """Ours with eta_ddim=1 and λ = class_scale·s/B (s = 2²⁰ with use_fp16, line 814; B from loss.mean(), line 815)
    equals the official gradient-guided sampler: the condition replaced with ε drawn once (lines 787-793); both
    modalities stepped by DDPM (798-807, p_sample 453-470); the condition's step compared with q(xₙ₋₁|x₀) by its
    per-example mean (788, 811); x̃ = xₙ₋₁ − λ·√ᾱₙ·∇_{xₙ} at the input's step n (817), none on the last step (796)."""
    d, steps, seed, lam = Diffusion(LINEAR_EPS), 5, 1, 2.0
    model = Coupled(d)
    cond = {known: torch.randn(SHAPES[known], generator=torch.Generator().manual_seed(3))}
    scale = 2 ** 20 if use_fp16 else 1
    ref, timestep_map = official_sample(official, model, cond, steps, seed, lam * B / scale, use_fp16, clip)
    assert sorted(timestep_map, reverse=True) == d.timesteps(steps)  # "ddimS" is our spacing

    def ours(guidance):
        return sample(d, model, {OTHER[known]: SHAPES[OTHER[known]]}, cond=cond, steps=steps, guidance=guidance,
                        guidance_form="mmdiffusion", eta_ddim=1.0, clip_x0=clip,
                        generator=torch.Generator().manual_seed(seed), progress=False)

    out = ours(lam)
    assert torch.equal(out[known], cond[known])
    torch.testing.assert_close(out[OTHER[known]], ref[OTHER[known]], atol=2e-5, rtol=0)
    # the guidance is large enough here to be seen: λ/2 lands far from the official λ
    assert (ours(lam / 2)[OTHER[known]] - ref[OTHER[known]]).abs().max() > 1e-2
