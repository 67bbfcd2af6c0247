"""The samplers behind one interface (sampling.sample): DDIM, DPM-Solver++(2M) and (2S) against
diffusers, oracles and hand-written loops; the temporal masks of the known part; and the new sampler
against the DDIM sampler it replaced, bit for bit (Song et al. 2021; Lu et al. 2022; CMMD Eq. 3, 5)."""
import math

import pytest
import torch

import mmunet  # noqa: F401  (the "mmdiffusion" guidance form)
from diffusion import Diffusion
from legacy_sampler import legacy_sample
from sampling import SamplerConfig, sample
from test_diffusion import COSINE, LINEAR_EPS, SHAPES, Coupled, Oracle, TinyJoint, VideoFromAudio, drawn_noise, rand

diffusers = pytest.importorskip("diffusers")
TIME = {"video": 1, "audio": 2}
B = SHAPES["video"][0]


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- the new sampler equals the old one where they overlap ----------------------------------------------

@pytest.mark.parametrize("cfg", [COSINE, LINEAR_EPS])
@pytest.mark.parametrize("known", [None, "video", "audio"])
@pytest.mark.parametrize("kw", [{}, {"eta_ddim": 0.7}, {"guidance": 0.05}, {"clip_x0": True},
                                {"guidance": 0.5, "guidance_form": "mmdiffusion", "clip_x0": True}])
def test_ddim_equals_the_legacy_sampler_bit_for_bit(cfg, known, kw):
    """v2a, a2v and joint, with every option, as before; a whole condition given as an all-True mask too."""
    if known is None and kw.get("guidance"):
        pytest.skip("guidance needs a condition")
    d, model = Diffusion(cfg), TinyJoint()
    cond = None if known is None else {known: rand(SHAPES, 3)[known]}
    shapes = {k: s for k, s in SHAPES.items() if k != known}
    old = legacy_sample(d, model, shapes, cond=cond, steps=6, generator=gen(1), **kw)
    runs = [sample(d, model, shapes, cond=cond, steps=6, generator=gen(1), progress=False, **kw)]
    if known is not None:
        mask = {known: torch.ones(B, SHAPES[known][TIME[known]], dtype=torch.bool)}
        runs.append(sample(d, model, shapes, cond=cond, mask=mask, steps=6, generator=gen(1), progress=False, **kw))
    for new in runs:
        for k in SHAPES:
            assert torch.equal(new[k], old[k]), k


# ---- DPM-Solver++(2M) -----------------------------------------------------------------------------------

class Imperfect(torch.nn.Module):
    def __init__(self, oracle, error, scale=0.1):
        super().__init__()
        self.oracle, self.error, self.scale = oracle, error, scale

    def forward(self, x, n):
        o, e = self.oracle(x, n), self.error(x, n)
        return {k: o[k] + self.scale * e[k] for k in x}


def diffusers_dpm_loop(d, kwargs, model, steps, x, scheduler="DPMSolverMultistepScheduler"):
    """diffusers' DPM-Solver++ (multistep, or `scheduler`) at our timesteps, one scheduler (one history) per modality.
    It is handed our float64 ᾱ (equal to its own to float32, test_schedule_matches_diffusers): its float32 1 − ᾱ
    is 3e-3 off at n = 0, which moves the last step by 1e-4; this test compares solvers, not that rounding."""
    scheds = {}
    for k in x:
        scheds[k] = getattr(diffusers, scheduler)(num_train_timesteps=1000, algorithm_type="dpmsolver++",
                                                  solver_order=2, **kwargs)
        torch.testing.assert_close(scheds[k].alphas_cumprod, d.alphas_cumprod.float())
        scheds[k].alphas_cumprod = d.alphas_cumprod
        scheds[k].set_timesteps(timesteps=d.timesteps(steps))
    for t in scheds["video"].timesteps:
        out = model(x, torch.full((B,), int(t), dtype=torch.long))
        x = {k: scheds[k].step(out[k], t, x[k]).prev_sample for k in x}
    return x


@pytest.mark.parametrize("cfg,kwargs", [
    (COSINE, dict(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")),
    (LINEAR_EPS, dict(prediction_type="epsilon", beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
])
@pytest.mark.parametrize("steps", [25, 10, 7])
def test_dpmsolver_matches_diffusers(cfg, kwargs, steps):
    """A denoiser like a trained one (a fixed x₀'s true output, off by a joint term), so that samples stay
    O(1) for ε-prediction too, where x̂₀ = (xₙ − √(1−ᾱ)·ε̂)/√ᾱ divides by √ᾱ = 0.006 at n = 999."""
    d = Diffusion(cfg)
    model = Imperfect(Oracle(d, rand(SHAPES, 7)), TinyJoint())
    x, _ = drawn_noise(0, steps, False)
    ref = diffusers_dpm_loop(d, kwargs, model, steps, x)
    out = sample(d, model, SHAPES, sampler="dpmsolver++", steps=steps, generator=gen(0), progress=False)
    for k in SHAPES:
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg,kwargs", [
    (COSINE, dict(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")),
    (LINEAR_EPS, dict(prediction_type="epsilon", beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
])
@pytest.mark.parametrize("steps", [26, 10, 7, 2])
def test_dpmsolver_2s_matches_diffusers_singlestep(cfg, kwargs, steps):
    """DPM-Solver++(2S), two network evaluations per step, against diffusers' DPMSolverSinglestepScheduler
    (solver_order 2, its order list: pairs of grid steps, the last first order); odd and even step counts."""
    d = Diffusion(cfg)
    model = Imperfect(Oracle(d, rand(SHAPES, 7)), TinyJoint())
    x, _ = drawn_noise(0, steps, False)
    ref = diffusers_dpm_loop(d, kwargs, model, steps, x, "DPMSolverSinglestepScheduler")
    calls = []
    counted = lambda x, n: calls.append(int(n[0])) or model(x, n)  # noqa: E731
    out = sample(d, counted, SHAPES, sampler="dpmsolver++2s", steps=steps, generator=gen(0), progress=False)
    assert calls == d.timesteps(steps)  # one evaluation per grid step, as many as --steps
    for k in SHAPES:
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg", [COSINE, LINEAR_EPS])
@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "dpmsolver++2s"])
def test_oracle_recovers_x0(cfg, sampler):
    d = Diffusion(cfg)
    x0 = rand(SHAPES, 7)
    out = sample(d, Oracle(d, x0), SHAPES, sampler=sampler, steps=10, generator=gen(0), progress=False)
    for k in SHAPES:
        torch.testing.assert_close(out[k], x0[k], atol=1e-4, rtol=0)


def guided_dpm_loop(d, model, v0, steps, seed, lam):
    """Video→audio with DPM-Solver++(2M) and CMMD guidance written out: the solver integrates the guided â₀
    plus the second-order correction of the network's own x̂₀, which is what its history keeps (the [choice]
    in sampling.dpmpp_2m)."""
    g = gen(seed)
    eps_v, a = torch.randn(SHAPES["video"], generator=g), torch.randn(SHAPES["audio"], generator=g)
    ts = d.timesteps(steps)
    prev = None  # (the network's x̂₀, h) of the previous step
    for i, n in enumerate(ts):
        ab = d.alphas_cumprod[n].item()
        ab_prev = d.alphas_cumprod[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        v_n = math.sqrt(ab) * v0 + math.sqrt(1 - ab) * eps_v
        a = a.detach().requires_grad_()
        out = model({"video": v_n, "audio": a}, torch.full((B,), n))
        v0_hat = math.sqrt(ab) * v_n - math.sqrt(1 - ab) * out["video"]
        a0_bar = math.sqrt(ab) * a - math.sqrt(1 - ab) * out["audio"]
        grad, = torch.autograd.grad(((v0 - v0_hat) ** 2).sum(), a)
        a0_hat = (a0_bar - lam * math.sqrt(ab) * grad).detach()
        if ab_prev == 1.0:
            return a0_hat
        lam_s, lam_t = (0.5 * math.log(x / (1 - x)) for x in (ab, ab_prev))
        h = lam_t - lam_s
        a0_bar = a0_bar.detach()
        D = a0_hat if prev is None else a0_hat + h / (2 * prev[1]) * (a0_bar - prev[0])
        a = math.sqrt((1 - ab_prev) / (1 - ab)) * a.detach() + math.sqrt(ab_prev) * (1 - math.exp(-h)) * D
        prev = (a0_bar, h)


def test_dpmsolver_guidance_matches_hand_loop():
    d = Diffusion(COSINE)
    model, v0 = VideoFromAudio(d, "v"), rand(SHAPES, 3)["video"]
    out = sample(d, model, {"audio": SHAPES["audio"]}, sampler="dpmsolver++", cond={"video": v0}, steps=6,
                   guidance=0.05, generator=gen(2), progress=False)
    torch.testing.assert_close(out["audio"], guided_dpm_loop(d, model, v0, 6, 2, 0.05), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("form,lams", [("cmmd", (0.01, 0.05)), ("mmdiffusion", (0.5, 2.0))])
def test_dpmsolver_guidance_lowers_reconstruction_error(form, lams):
    d = Diffusion(LINEAR_EPS)
    model, v0 = VideoFromAudio(d, "eps"), rand(SHAPES, 3)["video"]

    def err(lam):
        a = sample(d, model, {"audio": SHAPES["audio"]}, sampler="dpmsolver++", cond={"video": v0}, steps=10,
                     guidance=lam, guidance_form=form, generator=gen(0), progress=False)["audio"]
        return ((v0 - model.x0(a)[0]) ** 2).sum().item()

    e = [err(0.0), *map(err, lams)]
    assert e[0] > e[1] > e[2], e


def test_sampler_config_refuses_bad_values():
    for bad in (dict(sampler="euler"), dict(steps=0), dict(guidance=-1.0), dict(guidance=float("nan")),
                dict(guidance_form="ddpm"), dict(eta_ddim=1.5), dict(sampler="dpmsolver++", eta_ddim=0.5)):
        with pytest.raises(ValueError, match="sampling.py"):
            SamplerConfig(**bad)


def test_deterministic_under_generator_for_each_sampler():
    d, model = Diffusion(COSINE), TinyJoint()
    for sampler in ("ddim", "dpmsolver++"):
        a, b, c = (sample(d, model, SHAPES, sampler=sampler, steps=5, generator=gen(s), progress=False)
                   for s in (0, 0, 1))
        assert all(torch.equal(a[k], b[k]) for k in SHAPES) and not torch.allclose(a["audio"], c["audio"])


# ---- temporal masks: continuation, inpainting, long generation -----------------------------------------

def prefix_mask(k, known_steps):
    m = torch.zeros(B, SHAPES[k][TIME[k]], dtype=torch.bool)
    m[:, :known_steps] = True
    return m


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
@pytest.mark.parametrize("guidance,form", [(0.0, "cmmd"), (0.05, "cmmd"), (0.5, "mmdiffusion")])
def test_continuation_keeps_the_prefix(sampler, guidance, form):
    """Audio continuation: the whole video and the first audio steps known; the prefix comes back exactly,
    the rest is generated, and the shapes are the sample's."""
    d, model, x0 = Diffusion(LINEAR_EPS), TinyJoint(), rand(SHAPES, 3)
    mask = {"audio": prefix_mask("audio", 5)}
    out = sample(d, model, {}, cond=x0, mask=mask, sampler=sampler, steps=6, guidance=guidance, guidance_form=form,
                   generator=gen(0), progress=False)
    assert {k: tuple(v.shape) for k, v in out.items()} == SHAPES
    assert out["video"] is x0["video"]
    assert torch.equal(out["audio"][..., :5], x0["audio"][..., :5])
    assert (out["audio"][..., 5:] - x0["audio"][..., 5:]).abs().min() > 0  # generated, not copied


def test_sounding_video_continuation_keeps_both_prefixes():
    d, model, x0 = Diffusion(COSINE), TinyJoint(), rand(SHAPES, 4)
    mask = {"video": prefix_mask("video", 1), "audio": prefix_mask("audio", 4)}
    out = sample(d, model, {}, cond=x0, mask=mask, sampler="dpmsolver++", steps=5, guidance=0.05,
                   generator=gen(0), progress=False)
    assert (torch.equal(out["video"][:, :1], x0["video"][:, :1])
            and torch.equal(out["audio"][..., :4], x0["audio"][..., :4]))
    assert not torch.equal(out["video"][:, 1:], x0["video"][:, 1:])


def test_all_false_mask_is_joint_generation():
    """A modality whose mask knows nothing is generated as in joint generation, bit for bit."""
    d, model, x0 = Diffusion(COSINE), TinyJoint(), rand(SHAPES, 3)
    joint = sample(d, model, SHAPES, steps=6, generator=gen(5), progress=False)
    none = sample(d, model, {"audio": SHAPES["audio"]}, cond={"video": x0["video"]},
                    mask={"video": torch.zeros(B, SHAPES["video"][1], dtype=torch.bool)}, steps=6, generator=gen(5),
                    progress=False)
    for k in SHAPES:
        assert torch.equal(joint[k], none[k])


def test_oracle_inpaints_the_unknown_part():
    """With a perfect denoiser of x₀, the unknown part of a partly known sample is x₀'s."""
    d, x0 = Diffusion(COSINE), rand(SHAPES, 8)
    given = {k: v.clone() for k, v in x0.items()}
    given["audio"][..., 6:] = 5.0  # values under the mask's False part must not matter
    out = sample(d, Oracle(d, x0), {}, cond=given, mask={"audio": prefix_mask("audio", 6)}, sampler="dpmsolver++",
                   steps=10, generator=gen(0), progress=False)
    torch.testing.assert_close(out["audio"], x0["audio"], atol=1e-4, rtol=0)


def masked_guided_loop(d, model, x0, known_steps, steps, seed, lam, form):
    """Sounding-video continuation with guidance, written out (DDIM, η = 0): the whole video and, per example,
    the first known_steps[b] audio steps known (m, broadcast over the mel bins M).
    "cmmd":        â₀ = ā₀ − λ·√ᾱₙ·∇_{aₙ} ‖m ⊙ (x₀ − x̂₀)‖² summed over both modalities (CMMD Eq. 3, Eq. 5);
    "mmdiffusion": ãₙ₋₁ = aₙ₋₁ − λ·√ᾱₙ·∇_{aₙ} Σ_b mean over b's known elements of (xₙ₋₁ − q(xₙ₋₁|x₀))², both
                   modalities stepped (MM-Diffusion Eq. 12 as the official multimodal_gaussian_diffusion.py:811-817
                   runs it, its mean_flat taken over the known elements), none on the last step (:796)."""
    g = gen(seed)
    eps = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}  # ε of Eq. 5, and the start of the unknown audio
    T = SHAPES["audio"][TIME["audio"]]
    m = (torch.arange(T) < torch.tensor(known_steps).view(B, 1)).view(B, 1, T)  # (B, 1, T): known audio steps
    m_all = m.expand(SHAPES["audio"]).flatten(1).float()  # (B, M·T)
    a, ts = eps["audio"], d.timesteps(steps)
    for i, n in enumerate(ts):
        ab = d.alphas_cumprod[n].item()
        ab_prev = d.alphas_cumprod[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        q = {k: math.sqrt(ab) * x0[k] + math.sqrt(1 - ab) * eps[k] for k in SHAPES}  # Eq. 5
        x = {"video": q["video"], "audio": torch.where(m, q["audio"], a).detach().requires_grad_()}
        out = model(x, torch.full((B,), n))
        x0_hat, eps_hat = {}, {}
        for k in SHAPES:  # x̂₀ and ε̂ from ε̂ (Ho et al. 2020, Eq. 4) or from 𝐯̂ (Salimans & Ho 2022)
            if d.cfg.prediction == "eps":
                x0_hat[k], eps_hat[k] = (x[k] - math.sqrt(1 - ab) * out[k]) / math.sqrt(ab), out[k]
            else:
                x0_hat[k] = math.sqrt(ab) * x[k] - math.sqrt(1 - ab) * out[k]
                eps_hat[k] = math.sqrt(1 - ab) * x[k] + math.sqrt(ab) * out[k]
        if form == "cmmd":
            err = ((x0["video"] - x0_hat["video"]) ** 2).sum() + (m * (x0["audio"] - x0_hat["audio"]) ** 2).sum()
            grad, = torch.autograd.grad(err, x["audio"])
            a0 = x0_hat["audio"] - lam * math.sqrt(ab) * grad
            a = math.sqrt(ab_prev) * a0 + math.sqrt(1 - ab_prev) * (x["audio"] - math.sqrt(ab) * a0) / math.sqrt(1 - ab)
        else:
            prev = {k: math.sqrt(ab_prev) * x0_hat[k] + math.sqrt(1 - ab_prev) * eps_hat[k] for k in SHAPES}
            a = prev["audio"]
            if i + 1 < len(ts):
                q_prev = {k: math.sqrt(ab_prev) * x0[k] + math.sqrt(1 - ab_prev) * eps[k] for k in SHAPES}
                e = {k: ((prev[k] - q_prev[k]) ** 2).flatten(1) for k in SHAPES}  # (B, ·)
                err = e["video"].mean(1).sum() + ((e["audio"] * m_all).sum(1) / m_all.sum(1)).sum()
                grad, = torch.autograd.grad(err, x["audio"])
                a = a - lam * math.sqrt(ab) * grad
        a = a.detach()
    return torch.where(m, x0["audio"], a)


@pytest.mark.parametrize("form,cfg,lam", [("cmmd", COSINE, 0.05), ("mmdiffusion", LINEAR_EPS, 2.0)])
def test_masked_guidance_matches_hand_loop(form, cfg, lam):
    """Guidance on a partly known modality reads only its known elements (m of CMMD Eq. 3; the official mean
    per example of MM-Diffusion, over the known elements); the values under the mask's False part never matter.
    Examples know different numbers of audio steps, so a sum in place of the mean per example shows."""
    d = Diffusion(cfg)
    model, x0, known_steps = Coupled(d), rand(SHAPES, 4), [4, 9]
    given = {k: v.clone() for k, v in x0.items()}
    for b, s in enumerate(known_steps):
        given["audio"][b, :, s:] = 5.0  # not known: must not enter the guidance
    mask = {"audio": torch.arange(SHAPES["audio"][2]) < torch.tensor(known_steps).view(B, 1)}  # (B, T)
    out = sample(d, model, {}, cond=given, mask=mask, steps=6, guidance=lam, guidance_form=form, generator=gen(2),
                   progress=False)
    ref = masked_guided_loop(d, model, given, known_steps, 6, 2, lam, form)
    torch.testing.assert_close(out["audio"], ref, atol=1e-5, rtol=1e-5)
    replacement = sample(d, model, {}, cond=given, mask=mask, steps=6, generator=gen(2), progress=False)["audio"]
    assert (out["audio"] - replacement).abs().max() > 1e-2  # the guidance is seen


def test_mask_must_match_its_modality():
    d, model, x0 = Diffusion(COSINE), TinyJoint(), rand(SHAPES, 3)
    with pytest.raises(AssertionError, match="mask"):
        sample(d, model, {}, cond=x0, mask={"audio": torch.ones(B, 3, dtype=torch.bool)}, steps=2, progress=False)
    with pytest.raises(AssertionError, match="without cond"):
        sample(d, model, SHAPES, mask={"audio": prefix_mask("audio", 2)}, steps=2, progress=False)
    with pytest.raises(ValueError, match="nothing to generate"):
        sample(d, model, {}, cond=x0, steps=2, progress=False)
