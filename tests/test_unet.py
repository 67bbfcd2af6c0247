"""Checks of the easy-fusion U-Net (unet.py; CMMD App. B, Fig. 6, Table 3/4) on CPU with tiny configs."""
import json
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

import unet
from unet import UNet, UNetConfig, easy_fusion, preset

PAPER_PARAMS = 106e6  # CMMD Table 3: (n)CMMD has 106 M parameters
PARAM_TOLERANCE = 0.05


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def inputs(B=2, F_=18, H=8, T=112, cfg=None, seed=0):
    """Random (x, n) for `cfg` (default: tiny): video latents (B, F, C, H, W), mel (B, M, T), steps (B,)."""
    cfg = cfg or preset("tiny")
    g = torch.Generator().manual_seed(seed)
    x = {"video": torch.randn(B, F_, cfg.video_channels, H, H, generator=g),
         "audio": torch.randn(B, cfg.audio_channels, T, generator=g)}
    return x, torch.randint(0, 1000, (B,), generator=g)


def perturbed(cfg, std=0.05, seed=0) -> UNet:
    """A model with noise added to every parameter: at initialisation the zero-initialised output layers
    make the outputs constant, so dependence checks need weights off that point."""
    torch.manual_seed(seed)
    model = UNet(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def test_paper_parameter_count():
    with torch.device("meta"):  # counting needs no memory or initialisation
        model = UNet(preset("paper"))
    count = sum(p.numel() for p in model.parameters())
    print(f"paper preset: {count / 1e6:.2f} M parameters (CMMD: 106 M, {100 * (count / PAPER_PARAMS - 1):+.1f} %)")
    assert abs(count / PAPER_PARAMS - 1) <= PARAM_TOLERANCE, f"{count} parameters, paper 106 M ± 5 %"


def test_fusion_off_keeps_parameter_count():
    counts = []
    for fusion in (True, False):
        with torch.device("meta"):
            counts.append(sum(p.numel() for p in UNet(preset("paper", fusion=fusion)).parameters()))
    assert counts[0] == counts[1]


def test_shapes_and_length_agnostic():
    """One set of weights: 18 and 36 frames, 112 and 224 mel steps, 8×8 and 16×16 latents, and mel lengths
    that need padding; the output has the input's shapes."""
    model = perturbed(preset("tiny"))
    for F_, T, H in [(18, 112, 8), (36, 224, 8), (18, 112, 16), (36, 224, 16), (18, 113, 8), (7, 31, 8)]:
        x, n = inputs(F_=F_, T=T, H=H)
        with torch.no_grad():
            out = model(x, n)
        for m in x:
            assert out[m].shape == x[m].shape and out[m].dtype == x[m].dtype, (m, F_, T, H)
            assert torch.isfinite(out[m]).all()


@pytest.mark.parametrize("overrides", [dict(conv_resample=True), dict(channel_mult=(1, 2, 2), num_res_blocks=2),
                                       dict(video_channels=3, audio_channels=1)])
def test_variants_shapes(overrides):
    """Conv resampling, three levels with two blocks each (T = 113 padded to 116), pixels + raw waveform."""
    cfg = preset("tiny", **overrides)
    x, n = inputs(T=113, cfg=cfg)
    with torch.no_grad():
        out = UNet(cfg)(x, n)
    assert {m: out[m].shape for m in out} == {m: x[m].shape for m in x}


@pytest.mark.parametrize("fusion", [True, False])
def test_cross_modal_dependence(fusion):
    """With fusion each output depends on the other modality's input; without it, not at all (exactly)."""
    model = perturbed(preset("tiny", fusion=fusion))
    x, n = inputs()
    other = {"video": "audio", "audio": "video"}
    with torch.no_grad():
        out = model(x, n)
        for changed in x:
            x2 = dict(x, **{changed: x[changed] + torch.randn_like(x[changed])})
            out2 = model(x2, n)
            m = other[changed]  # the output that may only change through fusion
            diff = (out2[m] - out[m]).abs().max().item()
            if fusion:
                assert diff > 1e-3 * out[m].abs().max().item(), f"{m} output ignores the {changed} input"
            else:
                assert torch.equal(out2[m], out[m]), f"{m} output depends on the {changed} input ({diff})"
            assert not torch.equal(out2[changed], out[changed])  # its own output always changes


def test_fusion_is_nearest_exact_and_average_pool():
    """easy_fusion against torch's references: nearest-exact interpolation and average pooling (Fig. 6)."""
    g = torch.Generator().manual_seed(0)
    h = {"video": torch.randn(2, 8, 18, 4, 4, generator=g), "audio": torch.randn(2, 8, 112, generator=g)}
    fused = easy_fusion(h, t_valid=112)
    a2v = F.interpolate(h["audio"], size=18, mode="nearest-exact")  # (B, C, F)
    torch.testing.assert_close(fused["video"], a2v, rtol=0, atol=0)  # repeated over H×W by the block
    v2a = F.interpolate(F.adaptive_avg_pool3d(h["video"], (18, 1, 1))[..., 0, 0], size=112, mode="nearest-exact")
    torch.testing.assert_close(fused["audio"], v2a)
    # Zero padding of the audio (here 112 -> 120) must not move the time alignment of the valid part.
    padded = easy_fusion({"video": h["video"], "audio": F.pad(h["audio"], (0, 8))}, t_valid=112)
    torch.testing.assert_close(padded["video"], fused["video"], rtol=0, atol=0)
    torch.testing.assert_close(padded["audio"][..., :112], fused["audio"], rtol=0, atol=0)


@pytest.mark.parametrize("c_x, c_b, groups", [(48, 192, 8), (16, 96, 8), (7, 9, 4)])
def test_broadcast_input_equals_the_materialised_repeat(c_x, c_b, groups):
    """A video block given the fused audio as `broadcast` (B, C_b, F) computes what it computes on the
    concatenation with that audio repeated over H×W (Fig. 6), outputs and gradients, also where a GroupNorm
    group holds channels of both parts (the first two cases: 30 and 14 channels per group)."""
    cfg = preset("tiny", norm_groups=groups, time_embed_dim=16)
    torch.manual_seed(0)
    block = unet.ResBlock("video", c_x + c_b, 16, cfg)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    g = torch.Generator().manual_seed(1)
    x, b = torch.randn(2, c_x, 5, 6, 6, generator=g), torch.randn(2, c_b, 5, generator=g) + 0.5
    emb = torch.randn(2, 16, generator=g)
    outs, grads = [], []
    for form in ("materialised", "broadcast"):
        xi, bi = x.clone().requires_grad_(), b.clone().requires_grad_()
        if form == "materialised":
            out = block(torch.cat([xi, bi[..., None, None].expand(-1, -1, -1, 6, 6)], 1), emb)
        else:
            out = block(xi, emb, broadcast=bi)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        outs.append(out)
        grads.append([xi.grad, bi.grad] + [p.grad.clone() for p in block.parameters()])
        block.zero_grad()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    for new, ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(new, ref, rtol=1e-4, atol=1e-4)


def test_attention_in_chunks_is_the_same(monkeypatch):
    """Splitting the folded batch for the CUDA kernels' limit (SDPA_MAX_BATCH) changes nothing."""
    model = perturbed(preset("tiny"))
    x, n = inputs()
    with torch.no_grad():
        ref = model(x, n)
        monkeypatch.setattr(unet, "SDPA_MAX_BATCH", 5)
        out = model(x, n)
    for m in x:
        torch.testing.assert_close(out[m], ref[m])


def test_deterministic_with_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = perturbed(preset("tiny"), seed=7)
        with torch.no_grad():
            outs.append(model(*inputs()))
    for m in outs[0]:
        assert torch.equal(outs[0][m], outs[1][m])


def test_backward_finite_gradients_and_checkpointing():
    """Every parameter gets a finite gradient; gradient checkpointing gives the same gradients."""
    grads = []
    for grad_checkpoint in (False, True):
        model = perturbed(preset("tiny", grad_checkpoint=grad_checkpoint, dropout=0.0)).train()
        x, n = inputs()
        out = model(x, n)
        sum((out[m] ** 2).mean() for m in out).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"bad gradient for {name}"
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_gradients_at_initialisation_are_finite():
    model = UNet(preset("tiny")).train()
    out = model(*inputs())
    sum((out[m] - 1).pow(2).mean() for m in out).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_bf16_autocast():
    model = perturbed(preset("tiny"))
    x, n = inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, n)
    with torch.no_grad():
        ref = model(x, n)
    for m in x:
        assert out[m].shape == x[m].shape and out[m].dtype == torch.float32
        assert torch.isfinite(out[m]).all()
        assert (out[m] - ref[m]).abs().max() < 0.1 * ref[m].abs().max() + 1e-3


@pytest.mark.parametrize("name", ["paper", "small", "tiny"])
def test_presets_audio_path_not_narrower_than_mel(name):
    """A path narrower than its input cannot pass xₙ's noise through (docs/networks.md, widths per path):
    every preset's audio path is at least as wide as the 80 mel bins, and its blocks are built that wide."""
    cfg = preset(name)
    assert cfg.width["audio"] >= cfg.audio_channels == 80
    model = UNet(cfg) if name != "paper" else None
    if model is not None:
        assert model.inp["audio"].out_channels == cfg.audio_base_channels
        assert model.out["audio"][-1].in_channels == cfg.audio_base_channels * cfg.channel_mult[0]


def test_config_json_round_trip_and_errors():
    cfg = preset("small")
    assert UNetConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="divisible"):
        UNet(preset("tiny"))(*inputs(H=5))


@pytest.mark.slow  # two minutes of compiling on a 2-core CPU
def test_compiled_forward_equals_eager():
    """pipeline.compile_net (torch.compile, its default mode on a CPU: the code path `sample.py --compile`
    takes) computes what the eager network does, forward and the backward pass guidance takes."""
    import pipeline
    model = perturbed(preset("tiny"))
    x, n = inputs(B=1, F_=6, T=48)
    compiled = pipeline.compile_net(model, torch.device("cpu"))
    for k, v in compiled(x, n).items():
        torch.testing.assert_close(v, model(x, n)[k], atol=1e-5, rtol=1e-4)
    grads = []
    for net in (model, compiled):
        xa = x["audio"].clone().requires_grad_(True)
        net({"video": x["video"], "audio": xa}, n)["video"].square().sum().backward()
        grads.append(xa.grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphed_bf16_forward_equals_eager():
    """The CUDA-graphed forward (compile_net's reduce-overhead mode) of the paper preset at 16×16 latents,
    batch 1, under bf16 autocast, equals the eager one to bf16's precision, call after call (static buffers)."""
    import pipeline
    torch.manual_seed(0)
    model = UNet(preset("paper")).cuda().eval()
    graphed = pipeline.compile_net(model, torch.device("cuda"))
    for seed in range(3):  # new values in the same static buffers
        x, n = inputs(B=1, F_=18, H=16, T=112, cfg=preset("paper"), seed=seed)
        x, n = {k: v.cuda() for k, v in x.items()}, n.cuda()
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            eager, out = model(x, n), graphed(x, n)
        for k in out:
            torch.testing.assert_close(out[k].float(), eager[k].float(), atol=3e-2, rtol=3e-2)
