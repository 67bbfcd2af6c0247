"""mmunet.py, the MM-Diffusion baseline's network: the official size, RS-MMA against the paper's definition and a
dense masked reference, shapes, zero-shot conditional sampling, a training step and determinism (MM-Diffusion
§3.3–3.4)."""
import math

import pytest
import torch

import mmunet as M
import models
import sampling
from diffusion import Diffusion

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Overwrite every parameter (zero-initialised projections included) so every path carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def tiny(seed: int = 0) -> M.MMDiffusion:
    return randomize_(M.MMDiffusion(M.preset("tiny")), seed)


def rand_inputs(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g).clamp(-1, 1) for k, s in shapes.items()}


# ---- size ------------------------------------------------------------------------------------------------

def test_official_parameter_count():
    with torch.device("meta"):  # build without allocating or initialising 134 M weights
        model = M.MMDiffusion(M.preset("official"))
    total = sum(p.numel() for p in model.parameters())
    split = M.param_split(model)
    print(f"MM-Diffusion official: {total / 1e6:.2f} M parameters "
          f"(video {split['video'] / 1e6:.2f} M, audio {split['audio'] / 1e6:.2f} M, "
          f"shared {split['shared'] / 1e6:.2f} M)")
    assert abs(total / M.OFFICIAL_PARAMS - 1) < 0.02, f"{total / 1e6:.2f} M vs official 133.68 M"
    assert split["video"] == pytest.approx(96.7e6, rel=0.01) and split["audio"] == pytest.approx(34.6e6, rel=0.01)
    # the official dilation sequence 2^(k mod 10): encoder blocks, then the middle block
    dil = [m.res["audio"].in_layers[-1].dilation[0] for m in model.modules() if isinstance(m, M.MMResBlock)]
    assert dil[:13] == [2, 4, 8, 16, 32, 64, 128, 256, 512, 1, 2, 4, 4]


# ---- RS-MMA ----------------------------------------------------------------------------------------------

def test_rs_mma_mask_explicit():
    # F = 4 frames, L = 9 samples → segments [0, 1], [2, 3], [4, 5], [6, 7, 8] (the remainder in the last);
    # window S = 2, shift R = 1: unit i sees units i+1, i+2 mod 4 (frame 2 → segments 3, 0; frame 3 → 0, 1).
    mask = M.rs_mma_mask(4, 9, window=2, shift=1)
    video = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0, 0],
                          [0, 0, 0, 0, 1, 1, 1, 1, 1],
                          [1, 1, 0, 0, 0, 0, 1, 1, 1],
                          [1, 1, 1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    segment_to_frames = torch.tensor([[0, 1, 1, 0],   # segment 0 → frames 1, 2
                                      [0, 0, 1, 1],   # segment 1 → frames 2, 3
                                      [1, 0, 0, 1],   # segment 2 → frames 3, 0
                                      [1, 1, 0, 0]],  # segment 3 → frames 0, 1
                                     dtype=torch.bool)
    audio = segment_to_frames[torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3])]
    assert torch.equal(mask["video"], video)
    assert torch.equal(mask["audio"], audio)


@pytest.mark.parametrize("F_,L,window,shift", [(4, 8, 1, 3), (5, 17, 3, 2), (6, 6, 2, 4), (4, 11, 4, 0), (3, 7, 8, 1)])
def test_rs_mma_mask_matches_paper_definition(F_, L, window, shift):
    """§3.3: segment i of ⌊L/F⌋ samples (remainder to the last) ↔ frames f_s = (i+R) % F … f_e = (i+R+S) % F."""
    mask = M.rs_mma_mask(F_, L, window, shift)
    seg_len = L // F_
    segment = [min(j // seg_len, F_ - 1) for j in range(L)]
    for i in range(F_):
        seen = {(i + shift + s) % F_ for s in range(min(window, F_))}
        for j in range(L):
            assert mask["video"][i, j] == (segment[j] in seen), (i, j)
    for j in range(L):
        seen = {(segment[j] + shift + s) % F_ for s in range(min(window, F_))}
        assert mask["audio"][j].tolist() == [f in seen for f in range(F_)], j


def dense_rsmma(block: M.RSMMA, h: dict, window: int | None, shift: int) -> dict:
    """RS-MMA the slow way: dense attention over all tokens with the boolean mask of `rs_mma_mask`."""
    v, a = h["video"], h["audio"]
    B, C, F_, H, W = v.shape
    L = a.shape[2]
    x = {"video": block.norm["video"](v).permute(0, 2, 3, 4, 1).reshape(B, F_ * H * W, C),
         "audio": block.norm["audio"](a).transpose(1, 2)}
    q, k, vv = {}, {}, {}
    for m in M.MODALITIES:
        q[m], k[m], vv[m] = block.qkv[m](x[m]).chunk(3, dim=-1)
    masks = M.rs_mma_mask(F_, L, F_ if window is None else window, shift)
    masks = {"video": masks["video"].repeat_interleave(H * W, 0), "audio": masks["audio"].repeat_interleave(H * W, 1)}
    y = {}
    for m in M.MODALITIES:
        o, d = M.OTHER[m], C // block.heads
        qh, kh, vh = (t.view(B, -1, block.heads, d).transpose(1, 2) for t in (q[m], k[o], vv[o]))  # (B, heads, N, d)
        scores = (qh @ kh.transpose(-1, -2) / math.sqrt(d)).masked_fill(~masks[m], float("-inf"))
        y[m] = block.proj[m]((scores.softmax(-1) @ vh).transpose(1, 2).reshape(B, -1, C))
    return {"video": v + y["video"].view(B, F_, H, W, C).permute(0, 4, 1, 2, 3),
            "audio": a + y["audio"].transpose(1, 2)}


@pytest.mark.parametrize("F_,L,window,shift",
                         [(4, 9, 2, 1), (4, 8, 1, 3), (5, 23, 3, 2), (4, 10, None, 0), (3, 7, 4, 0)])
def test_rs_mma_block_equals_dense_masked_attention(F_, L, window, shift):
    cfg = M.MMDiffusionConfig(head_channels=8, norm_groups=4)
    block = randomize_(M.RSMMA(16, window, cfg), seed=1, std=0.3)
    g = torch.Generator().manual_seed(2)
    h = {"video": torch.randn(2, 16, F_, 3, 2, generator=g), "audio": torch.randn(2, 16, L, generator=g)}
    got = block(h, shift)
    want = dense_rsmma(block, h, window, shift)
    for m in M.MODALITIES:
        torch.testing.assert_close(got[m], want[m], atol=1e-5, rtol=1e-5)


# ---- the network -----------------------------------------------------------------------------------------

def test_tiny_forward_shapes_and_length_agnostic():
    model = tiny().eval()
    for B, F_, size, L in [(2, 4, 16, 260), (1, 6, 8, 64)]:  # the preset's shapes, then other F, H, W, L
        x = rand_inputs({"video": (B, F_, 3, size, size), "audio": (B, 1, L)}, seed=0)
        out = model(x, torch.randint(0, 1000, (B,)))
        assert {k: t.shape for k, t in out.items()} == {k: t.shape for k, t in x.items()}
        assert all(t.isfinite().all() for t in out.values())
    with pytest.raises(ValueError, match="mmunet.py: .*audio length 30"):
        model(rand_inputs({"video": (1, 4, 3, 16, 16), "audio": (1, 1, 30)}, seed=0), torch.zeros(1, dtype=torch.long))


def test_fresh_model_predicts_zero():
    """Zero-initialised output convs (improved-diffusion): an untrained model predicts ε̂ = 0."""
    model = M.MMDiffusion(M.preset("tiny"))
    out = model(rand_inputs(model.shapes(1), seed=0), torch.tensor([10]))
    assert all((t == 0).all() for t in out.values())


def test_diffusion_config_is_linear_eps():
    cfg = M.MMDiffusion(M.preset("tiny")).diffusion_config
    assert (cfg.schedule, cfg.prediction, cfg.num_steps) == ("linear", "eps", 1000)


@pytest.mark.parametrize("given", ["video", "audio"])
def test_zero_shot_conditional_sampling(given):
    """Replacement (λ = 0) and gradient guidance (λ > 0, Eq. 12) with a few DDIM steps keep the condition."""
    model = tiny().eval()
    diffusion = Diffusion(model.diffusion_config)
    shapes = model.shapes(2)
    cond = {given: rand_inputs(shapes, seed=3)[given]}
    results = {}
    for lam in (0.0, 50.0):
        out = sampling.sample(diffusion, model, shapes, cond=cond, steps=4, guidance=lam, progress=False,
                               generator=torch.Generator().manual_seed(0), **models.MODELS["mmdiffusion"].sampler)
        assert torch.equal(out[given], cond[given])
        gen = M.OTHER[given]
        assert out[gen].shape == shapes[gen] and out[gen].isfinite().all()
        assert out[gen].abs().max() <= 1  # clip_x0 (official clip_denoised)
        results[lam] = out[gen]
    assert not torch.allclose(results[0.0], results[50.0]), "guidance changed nothing"


def test_training_step_gives_finite_gradients():
    model = M.MMDiffusion(M.preset("tiny")).train()
    diffusion = Diffusion(M.diffusion_config())
    torch.manual_seed(0)
    x0 = rand_inputs(model.shapes(2), seed=4)
    loss, terms = diffusion.joint_loss(model, x0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.isfinite() and set(terms) == {"video", "audio"}
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.isfinite().all() for g in grads)
    out_w = [model.out[m][-1].weight.grad for m in M.MODALITIES]  # zero-initialised, but learning
    assert all(g.abs().sum() > 0 for g in out_w)


def test_shift_is_seeded_in_training_and_zero_in_eval():
    model = tiny()
    x, n = rand_inputs(model.shapes(1), seed=5), torch.tensor([100])
    model.train()
    runs = []
    for seed in (0, 0, 1, 2):
        torch.manual_seed(seed)
        runs.append(model(x, n))
    for m in M.MODALITIES:
        torch.testing.assert_close(runs[0][m], runs[1][m], atol=0, rtol=0)
    assert any(not torch.equal(runs[0]["audio"], r["audio"]) for r in runs[2:]), "shift never changed the output"

    model.shift_generator = torch.Generator().manual_seed(7)  # a generator of its own: global RNG untouched
    a = model(x, n)
    model.shift_generator = torch.Generator().manual_seed(7)
    torch.manual_seed(123)
    b = model(x, n)
    torch.testing.assert_close(a["audio"], b["audio"], atol=0, rtol=0)

    draws = {model.draw_shift(2, 4) for _ in range(200)}
    assert draws == {0, 1, 2}  # R ∈ {0, …, F − S}
    assert model.draw_shift(None, 4) == 0 and model.draw_shift(4, 4) == 0  # full cross-attention: no shift
    model.eval()
    assert {model.draw_shift(2, 4) for _ in range(50)} == {0}
    model.cfg.shift_in_eval = True  # the official behaviour: redrawn in sampling too
    assert len({model.draw_shift(2, 4) for _ in range(200)}) == 3
