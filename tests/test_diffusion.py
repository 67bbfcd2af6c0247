"""diffusion.py against diffusers' schedulers, closed forms, oracles and hand-written loops."""
import math

import pytest
import torch
from torch import nn

from diffusion import Diffusion, DiffusionConfig
from sampling import sample

diffusers = pytest.importorskip("diffusers")

SHAPES = {"video": (2, 3, 2, 4, 4), "audio": (2, 5, 12)}  # (B, F, C, H, W), (B, M, T)
COSINE = DiffusionConfig(schedule="cosine", prediction="v")
LINEAR_EPS = DiffusionConfig(schedule="linear", prediction="eps")


class TinyJoint(nn.Module):
    """A fixed joint stand-in for the U-Net: each output depends on both modalities and on n."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mix_v = nn.Linear(2, 2)  # over video channels C
        self.mix_a = nn.Linear(5, 5)  # over mel bins M
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5

    def forward(self, x, n):
        v, a = x["video"], x["audio"]
        t = (n.float() / 1000).view(-1, 1)  # (B, 1)
        out_v = self.mix_v(v.movedim(2, -1)).movedim(-1, 2)  # (B, F, C, H, W)
        out_v = (torch.tanh(out_v) + 0.3 * a.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
                 + torch.sin(3 * t).view(-1, 1, 1, 1, 1))
        out_a = self.mix_a(a.transpose(1, 2)).transpose(1, 2)  # (B, M, T)
        out_a = torch.tanh(out_a) + 0.3 * v.mean(dim=(1, 2, 3, 4)).view(-1, 1, 1) + torch.cos(3 * t).view(-1, 1, 1)
        return {"video": out_v, "audio": out_a}


def bc(a, x):  # (B,) -> (B, 1, ...) like x
    return a.view(-1, *[1] * (x.ndim - 1)).to(x.dtype)


class Oracle(nn.Module):
    """Returns the true 𝐯 (or ε) of a fixed x₀ at every (xₙ, n): a perfect denoiser for one data point."""

    def __init__(self, d, x0):
        super().__init__()
        self.d, self.x0 = d, x0

    def forward(self, x, n):
        out = {}
        for k, xn in x.items():
            ab = bc(self.d.alphas_cumprod[n], xn)
            eps = (xn - ab.sqrt() * self.x0[k]) / (1 - ab).sqrt()
            out[k] = ab.sqrt() * eps - (1 - ab).sqrt() * self.x0[k] if self.d.cfg.prediction == "v" else eps
        return out


def rand(shapes, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()}


# ---- schedules -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,kwargs", [
    (COSINE, dict(beta_schedule="squaredcos_cap_v2")),
    (LINEAR_EPS, dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)),
])
def test_schedule_matches_diffusers(cfg, kwargs):
    d = Diffusion(cfg)
    for ref in (diffusers.DDPMScheduler(num_train_timesteps=1000, **kwargs),
                diffusers.DDIMScheduler(num_train_timesteps=1000, **kwargs)):
        assert d.alphas_cumprod.shape == (1000,)
        torch.testing.assert_close(d.alphas_cumprod, ref.alphas_cumprod.double(), atol=1e-6, rtol=0)


def test_cosine_betas_clipped():
    d = Diffusion(COSINE)
    assert d.betas.max().item() == pytest.approx(0.999)
    torch.testing.assert_close(d.alphas_cumprod, torch.cumprod(1 - d.betas, 0))


# ---- closed forms ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [COSINE, LINEAR_EPS])
@pytest.mark.parametrize("shape", [(3, 7), (3, 5, 11), (3, 2, 3, 4, 4)])
def test_conversions_round_trip(cfg, shape):
    d = Diffusion(cfg)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    n = torch.tensor([0, 500, 999])
    ab = bc(d.alphas_cumprod[n], x0)
    x_n = d.q_sample(x0, n, eps)
    torch.testing.assert_close(x_n, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    v = d.v_target(x0, n, eps)
    torch.testing.assert_close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)
    out = v if cfg.prediction == "v" else eps
    torch.testing.assert_close(d.target(x0, n, eps), out)
    torch.testing.assert_close(d.predict_x0(x_n, n, out), x0)
    torch.testing.assert_close(d.predict_eps(x_n, n, out), eps)


def test_bad_config_is_one_line_error():
    with pytest.raises(ValueError, match="diffusion.py: schedule"):
        DiffusionConfig(schedule="sigmoid")
    with pytest.raises(ValueError, match="diffusion.py: prediction"):
        DiffusionConfig(prediction="x0")


# ---- losses ----------------------------------------------------------------------------------------------

def hand_jdiff(d, model, x0, n, noise):
    x_n, tgt = {}, {}
    for k in x0:
        ab = bc(d.alphas_cumprod[n], x0[k])
        x_n[k] = ab.sqrt() * x0[k] + (1 - ab).sqrt() * noise[k]
        tgt[k] = ab.sqrt() * noise[k] - (1 - ab).sqrt() * x0[k]
    out = model(x_n, n)
    terms = {k: ((out[k] - tgt[k]) ** 2).mean() for k in x0}
    return sum(terms.values()), terms


def test_joint_loss_by_hand():
    d, model = Diffusion(COSINE), TinyJoint()
    x0, noise, n = rand(SHAPES, 2), rand(SHAPES, 3), torch.tensor([10, 900])
    loss, terms = d.joint_loss(model, x0, n=n, noise=noise)
    ref, ref_terms = hand_jdiff(d, model, x0, n, noise)
    torch.testing.assert_close(loss, ref)
    for k in SHAPES:
        torch.testing.assert_close(terms[k], ref_terms[k])
    loss.backward()
    assert model.mix_v.weight.grad is not None and model.mix_a.weight.grad is not None


def test_joint_loss_eps_target():
    d, model = Diffusion(LINEAR_EPS), TinyJoint()
    x0, noise, n = rand(SHAPES, 2), rand(SHAPES, 3), torch.tensor([10, 900])
    loss, _ = d.joint_loss(model, x0, n=n, noise=noise)
    x_n = {k: d.q_sample(x0[k], n, noise[k]) for k in SHAPES}
    out = model(x_n, n)
    torch.testing.assert_close(loss, sum(((out[k] - noise[k]) ** 2).mean() for k in SHAPES))


def test_joint_loss_deterministic_under_generator():
    d, model, x0 = Diffusion(COSINE), TinyJoint(), rand(SHAPES, 2)
    a = d.joint_loss(model, x0, generator=torch.Generator().manual_seed(5))[0]
    b = d.joint_loss(model, x0, generator=torch.Generator().manual_seed(5))[0]
    c = d.joint_loss(model, x0, generator=torch.Generator().manual_seed(6))[0]
    assert a.item() == b.item() and a.item() != c.item()


def test_contrastive_loss_by_hand():
    d, model, eta = Diffusion(COSINE), TinyJoint(), 0.3
    pos = rand(SHAPES, 2)
    neg_a = {"video": pos["video"], "audio": rand(SHAPES, 4)["audio"]}  # (v, a¬)
    neg_v = {"video": rand(SHAPES, 5)["video"], "audio": pos["audio"]}  # (v¬, a)
    noise = [rand(SHAPES, 10 + i) for i in range(3)]
    n = torch.tensor([3, 777])
    loss, terms = d.contrastive_loss(model, pos, [neg_a, neg_v], eta, n=n, noise=noise)
    L = [hand_jdiff(d, model, p, n, e)[0] for p, e in zip([pos, neg_a, neg_v], noise)]
    torch.testing.assert_close(loss, L[0] - eta * L[1] - eta * L[2])  # CMMD Eq. 6
    torch.testing.assert_close(terms["jdiff"], L[0])
    torch.testing.assert_close(terms["neg0"], L[1])
    torch.testing.assert_close(terms["neg1"], L[2])
    _, pos_terms = hand_jdiff(d, model, pos, n, noise[0])
    torch.testing.assert_close(terms["audio"], pos_terms["audio"])
    # drawn noise: every pair gets its own, so identical pairs still give different terms
    _, t2 = d.contrastive_loss(model, pos, [pos], eta, generator=torch.Generator().manual_seed(0))
    assert t2["jdiff"].item() != t2["neg0"].item()


@pytest.mark.parametrize("cfg", [COSINE, LINEAR_EPS])
def test_min_snr_weights_match_diffusers(cfg):
    """Min-SNR-γ as diffusers' text-to-image training script writes it: compute_snr, then min(SNR, γ) divided
    by SNR + 1 for a v target, by SNR for ε."""
    from diffusers.training_utils import compute_snr
    d, gamma = Diffusion(cfg), 5.0
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, trained_betas=d.betas.numpy())
    sched.alphas_cumprod = d.alphas_cumprod  # float64: diffusers' float32 1 − ᾱ near n = 0 is the only difference
    n = torch.tensor([0, 1, 50, 300, 500, 700, 999])
    snr = compute_snr(sched, n)
    ref = snr.clamp(max=gamma) / (snr + 1 if cfg.prediction == "v" else snr)
    torch.testing.assert_close(d.min_snr_weights(n, gamma).float(), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cfg", [COSINE, LINEAR_EPS])
def test_min_snr_losses_by_hand(cfg):
    """Each example's error times its weight, averaged: in L_jdiff and in every pair of L_cont (3 examples and
    3 pairs, so a weight broadcast along the wrong axis cannot pass)."""
    d, model, gamma = Diffusion(cfg), TinyJoint(), 2.0
    shapes = {k: (3, *s[1:]) for k, s in SHAPES.items()}
    x0, noise, n = rand(shapes, 2), rand(shapes, 3), torch.tensor([10, 100, 600])
    w = d.min_snr_weights(n, gamma).float()
    assert len(set(w.tolist())) == 3  # a test in which the weights matter

    def by_hand(pair, eps):
        x_n = {k: d.q_sample(pair[k], n, eps[k]) for k in shapes}
        out = model(x_n, n)
        return {k: (w * (out[k] - d.target(pair[k], n, eps[k])).pow(2).flatten(1).mean(1)).mean() for k in shapes}

    ref = by_hand(x0, noise)
    loss, terms = d.joint_loss(model, x0, n=n, noise=noise, snr_gamma=gamma)
    torch.testing.assert_close(loss, sum(ref.values()))
    for k in shapes:
        torch.testing.assert_close(terms[k], ref[k])
    assert abs(loss - d.joint_loss(model, x0, n=n, noise=noise)[0]) > 1e-3  # γ = 0: the uniform loss, another value
    negs = [{"video": x0["video"], "audio": rand(shapes, 4)["audio"]},
            {"video": rand(shapes, 5)["video"], "audio": x0["audio"]}]
    neg_noise = [rand(shapes, 6), rand(shapes, 7)]
    c_loss, c_terms = d.contrastive_loss(model, x0, negs, 0.3, n=n, noise=[noise, *neg_noise], snr_gamma=gamma)
    torch.testing.assert_close(c_terms["jdiff"], loss)
    L = [sum(by_hand(p, e).values()) for p, e in zip(negs, neg_noise)]
    torch.testing.assert_close(c_terms["neg0"], L[0])
    torch.testing.assert_close(c_loss, loss - 0.3 * (L[0] + L[1]))


# ---- DDIM against diffusers ------------------------------------------------------------------------------

def diffusers_loop(sched, model, steps, x, *, eta=0.0, step_noise=None, **step_kw):
    sched.set_timesteps(steps)
    for i, t in enumerate(sched.timesteps):
        out = model(x, torch.full((2,), int(t), dtype=torch.long))
        x = {k: sched.step(out[k], t, x[k], eta=eta, variance_noise=None if step_noise is None else step_noise[i][k],
                           **step_kw).prev_sample for k in x}
    return x


def drawn_noise(seed, steps, with_step_noise):
    """The sampler's documented draw order: one tensor per modality, then per step one per modality."""
    g = torch.Generator().manual_seed(seed)
    x = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    if not with_step_noise:
        return x, None
    return x, [{k: torch.randn(s, generator=g) for k, s in SHAPES.items()} for _ in range(steps)]


@pytest.mark.parametrize("cfg,kwargs,eta,steps", [
    (COSINE, dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"), 0.0, 20),
    (COSINE, dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"), 0.7, 20),
    (COSINE, dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"), 0.0, 7),  # 1000 % 7 != 0
    (LINEAR_EPS, dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="epsilon"), 0.0, 20),
    (LINEAR_EPS, dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, prediction_type="epsilon"), 1.0, 20),
])
def test_ddim_trajectory_matches_diffusers(cfg, kwargs, eta, steps):
    d, model = Diffusion(cfg), TinyJoint()
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True,
                                    timestep_spacing="leading", steps_offset=0, **kwargs)
    sched.set_timesteps(steps)
    assert d.timesteps(steps) == sched.timesteps.tolist()
    x, step_noise = drawn_noise(0, steps, eta > 0)
    ref = diffusers_loop(sched, model, steps, x, eta=eta, step_noise=step_noise)
    out = sample(d, model, SHAPES, steps=steps, eta_ddim=eta, generator=torch.Generator().manual_seed(0),
                 progress=False)
    for k in SHAPES:
        torch.testing.assert_close(out[k], ref[k], atol=1e-4, rtol=1e-4)


def test_ddim_clip_matches_diffusers():
    d, model = Diffusion(LINEAR_EPS), TinyJoint()
    sched = diffusers.DDIMScheduler(beta_schedule="linear", prediction_type="epsilon", clip_sample=True,
                                    clip_sample_range=1.0, set_alpha_to_one=True)
    x, _ = drawn_noise(1, 10, False)
    ref = diffusers_loop(sched, model, 10, x, use_clipped_model_output=True)
    out = sample(d, model, SHAPES, steps=10, clip_x0=True, generator=torch.Generator().manual_seed(1), progress=False)
    for k in SHAPES:
        torch.testing.assert_close(out[k], ref[k], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg", [COSINE, LINEAR_EPS])
def test_oracle_recovers_x0_joint(cfg):
    d = Diffusion(cfg)
    x0 = rand(SHAPES, 7)
    out = sample(d, Oracle(d, x0), SHAPES, steps=25, generator=torch.Generator().manual_seed(0), progress=False)
    for k in SHAPES:
        torch.testing.assert_close(out[k], x0[k], atol=1e-3, rtol=0)


def test_sample_deterministic_under_generator():
    d, model = Diffusion(COSINE), TinyJoint()

    def run(seed, **kw):
        return sample(d, model, SHAPES, steps=8, generator=torch.Generator().manual_seed(seed), progress=False, **kw)

    for kw in ({}, {"eta_ddim": 1.0}):
        a, b, c = run(0, **kw), run(0, **kw), run(1, **kw)
        assert all(torch.equal(a[k], b[k]) for k in SHAPES)
        assert not torch.allclose(a["audio"], c["audio"])


# ---- conditional generation (CMMD Eq. 3, 5) --------------------------------------------------------------

def replacement_loop(d, model, v0, steps, seed):
    """Video→audio by replacement, written out: vₙ = √ᾱₙ·v₀ + √(1−ᾱₙ)·εᵥ, then a DDIM step on the audio only."""
    g = torch.Generator().manual_seed(seed)
    eps_v, a = torch.randn(SHAPES["video"], generator=g), torch.randn(SHAPES["audio"], generator=g)
    ts = d.timesteps(steps)
    for i, n in enumerate(ts):
        ab = d.alphas_cumprod[n].item()
        ab_prev = d.alphas_cumprod[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        v_n = math.sqrt(ab) * v0 + math.sqrt(1 - ab) * eps_v
        out = model({"video": v_n, "audio": a}, torch.full((2,), n))["audio"]
        a0 = math.sqrt(ab) * a - math.sqrt(1 - ab) * out
        eps_a = math.sqrt(1 - ab) * a + math.sqrt(ab) * out
        a = math.sqrt(ab_prev) * a0 + math.sqrt(1 - ab_prev) * eps_a
    return a


def test_v2a_lambda0_is_replacement():
    d, model, v0 = Diffusion(COSINE), TinyJoint(), rand(SHAPES, 3)["video"]
    out = sample(d, model, {"audio": SHAPES["audio"]}, cond={"video": v0}, steps=10, guidance=0.0,
                   generator=torch.Generator().manual_seed(4), progress=False)
    assert torch.equal(out["video"], v0)
    torch.testing.assert_close(out["audio"], replacement_loop(d, model, v0, 10, 4), atol=1e-5, rtol=1e-5)


def test_a2v_shapes_and_condition_returned():
    d, model, a0 = Diffusion(COSINE), TinyJoint(), rand(SHAPES, 3)["audio"]
    out = sample(d, model, {"video": SHAPES["video"]}, cond={"audio": a0}, steps=5, guidance=0.5,
                   generator=torch.Generator().manual_seed(0), progress=False)
    assert out["video"].shape == SHAPES["video"] and torch.equal(out["audio"], a0)


class VideoFromAudio(nn.Module):
    """A model whose video reconstruction is a linear map of the noisy audio: v̂₀ = W·aₙ, â₀ = aₙ / 2."""

    def __init__(self, d, prediction):
        super().__init__()
        self.d, self.prediction = d, prediction
        g = torch.Generator().manual_seed(9)
        self.W = nn.Parameter(torch.randn(math.prod(SHAPES["video"][1:]), math.prod(SHAPES["audio"][1:]),
                                          generator=g) / 8)

    def x0(self, a):
        return (a.flatten(1) @ self.W.T).view(SHAPES["video"]), a / 2

    def forward(self, x, n):
        x0 = dict(zip(("video", "audio"), self.x0(x["audio"])))
        out = {}
        for k in x:
            ab = bc(self.d.alphas_cumprod[n], x[k])
            if self.prediction == "v":  # from x̂₀ = √ᾱ·xₙ − √(1−ᾱ)·𝐯
                out[k] = (ab.sqrt() * x[k] - x0[k]) / (1 - ab).sqrt()
            else:  # from x̂₀ = (xₙ − √(1−ᾱ)·ε) / √ᾱ
                out[k] = (x[k] - ab.sqrt() * x0[k]) / (1 - ab).sqrt()
        return out


class Coupled(nn.Module):
    """A fixed stand-in whose x̂₀ of each modality is linear in both inputs: x̂₀ᵥ = Wᵥ·aₙ + (1/2 + Vᵥ)·vₙ,
    x̂₀ₐ = Wₐ·vₙ + (1/2 + Vₐ)·aₙ over the flattened elements, output as 𝐯 or ε (d.cfg.prediction). Every element's
    reconstruction depends on every element of both modalities (guidance has a gradient both ways, and from a
    known part to the unknown part of the same modality) and x̂₀ stays O(1) at every n."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        g = torch.Generator().manual_seed(9)
        size = {k: math.prod(s[1:]) for k, s in SHAPES.items()}
        other = {"video": "audio", "audio": "video"}
        self.W = nn.ParameterDict({k: nn.Parameter(torch.randn(size[k], size[other[k]], generator=g) / 6)
                                   for k in SHAPES})
        self.V = nn.ParameterDict({k: nn.Parameter(torch.randn(size[k], size[k], generator=g) / 16) for k in SHAPES})

    def forward(self, x, n):
        out = {}
        for k, o in (("video", "audio"), ("audio", "video")):
            x0 = (x[o].flatten(1) @ self.W[k].T + x[k].flatten(1) @ self.V[k].T).view(x[k].shape) + x[k] / 2
            ab = bc(self.d.alphas_cumprod[n], x[k])
            if self.d.cfg.prediction == "v":  # from x̂₀ = √ᾱ·xₙ − √(1−ᾱ)·𝐯
                out[k] = (ab.sqrt() * x[k] - x0) / (1 - ab).sqrt()
            else:  # from x̂₀ = (xₙ − √(1−ᾱ)·ε) / √ᾱ
                out[k] = (x[k] - ab.sqrt() * x0) / (1 - ab).sqrt()
        return out


def guided_loop(d, model, v0, steps, seed, lam):
    """CMMD Eq. 3 written out, with autograd on the audio."""
    g = torch.Generator().manual_seed(seed)
    eps_v, a = torch.randn(SHAPES["video"], generator=g), torch.randn(SHAPES["audio"], generator=g)
    ts = d.timesteps(steps)
    for i, n in enumerate(ts):
        ab = d.alphas_cumprod[n].item()
        ab_prev = d.alphas_cumprod[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        v_n = math.sqrt(ab) * v0 + math.sqrt(1 - ab) * eps_v
        a = a.detach().requires_grad_()
        out = model({"video": v_n, "audio": a}, torch.full((2,), n))
        v0_hat = math.sqrt(ab) * v_n - math.sqrt(1 - ab) * out["video"]
        a0_bar = math.sqrt(ab) * a - math.sqrt(1 - ab) * out["audio"]
        grad, = torch.autograd.grad(((v0 - v0_hat) ** 2).sum(), a)
        a0_hat = a0_bar - lam * math.sqrt(ab) * grad
        eps_a = (a - math.sqrt(ab) * a0_hat) / math.sqrt(1 - ab)
        a = math.sqrt(ab_prev) * a0_hat + math.sqrt(1 - ab_prev) * eps_a
    return a.detach()


def test_cmmd_guidance_matches_hand_loop():
    d = Diffusion(COSINE)
    model, v0 = VideoFromAudio(d, "v"), rand(SHAPES, 3)["video"]
    out = sample(d, model, {"audio": SHAPES["audio"]}, cond={"video": v0}, steps=6, guidance=0.05,
                   generator=torch.Generator().manual_seed(2), progress=False)
    torch.testing.assert_close(out["audio"], guided_loop(d, model, v0, 6, 2, 0.05), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg,form,lams", [
    (COSINE, "cmmd", (0.01, 0.05)),
    (LINEAR_EPS, "cmmd", (0.01, 0.05)),
    (LINEAR_EPS, "mmdiffusion", (0.5, 2.0)),
])
def test_guidance_lowers_reconstruction_error(cfg, form, lams):
    d = Diffusion(cfg)
    model, v0 = VideoFromAudio(d, cfg.prediction), rand(SHAPES, 3)["video"]

    def err(lam):
        a = sample(d, model, {"audio": SHAPES["audio"]}, cond={"video": v0}, steps=10, guidance=lam,
                     guidance_form=form, generator=torch.Generator().manual_seed(0), progress=False)["audio"]
        return ((v0 - model.x0(a)[0]) ** 2).sum().item()  # ‖v₀ − v̂₀‖ of the generated audio

    e = [err(0.0), *map(err, lams)]
    assert e[0] > e[1] > e[2], e


class Independent(nn.Module):
    """Two streams that never meet (unet's fusion off): each output depends on its own input only."""
    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(0.3))

    def forward(self, x, n):
        return {k: self.s * x[k] for k in x}


@pytest.mark.parametrize("form", ["cmmd", "mmdiffusion"])
def test_guidance_without_a_path_between_the_streams_is_replacement(form):
    """With no path from the generated modality to the condition's reconstruction, ∇ is zero: guidance
    leaves the sample as replacement makes it, instead of failing in autograd."""
    d, v0 = Diffusion(COSINE), rand(SHAPES, 3)["video"]
    a = [sample(d, Independent(), {"audio": SHAPES["audio"]}, cond={"video": v0}, steps=5, guidance=lam,
                  guidance_form=form, generator=torch.Generator().manual_seed(0), progress=False)["audio"]
         for lam in (0.0, 10.0)]
    torch.testing.assert_close(a[0], a[1])


def test_guidance_needs_condition_and_known_form():
    d, model = Diffusion(COSINE), TinyJoint()
    with pytest.raises(ValueError, match="guidance needs a condition"):
        sample(d, model, SHAPES, steps=2, guidance=1.0, progress=False)
    with pytest.raises(ValueError, match="guidance_form"):
        sample(d, model, SHAPES, steps=2, guidance_form="ddpm", progress=False)


def test_runs_under_autocast():
    d, model, v0 = Diffusion(COSINE), TinyJoint(), rand(SHAPES, 3)["video"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sample(d, model, {"audio": SHAPES["audio"]}, cond={"video": v0}, steps=4, guidance=0.1,
                       generator=torch.Generator().manual_seed(0), progress=False)
        loss, _ = d.joint_loss(model, rand(SHAPES, 1), generator=torch.Generator().manual_seed(0))
    assert out["audio"].dtype == torch.float32 and torch.isfinite(out["audio"]).all()
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_follows_inputs_on_cuda():
    d, model = Diffusion(COSINE), TinyJoint().cuda()
    x0 = {k: v.cuda() for k, v in rand(SHAPES, 1).items()}
    g = torch.Generator().manual_seed(0)  # a CPU generator gives the same numbers on any device
    cpu = sample(d, TinyJoint(), {"audio": SHAPES["audio"]}, cond={"video": x0["video"].cpu()}, steps=5, guidance=0.1,
                   generator=torch.Generator().manual_seed(0), progress=False)
    gpu = sample(d, model, {"audio": SHAPES["audio"]}, cond={"video": x0["video"]}, steps=5, guidance=0.1,
                   generator=g, progress=False)
    torch.testing.assert_close(gpu["audio"].cpu(), cpu["audio"], atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = d.joint_loss(model, x0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.device.type == "cuda"
