"""Checks of the joint video-audio DiT (dit.py; MM-LDM Fig. 2, DiT adaLN-Zero, RoPE) on CPU with tiny configs."""
import json
from dataclasses import asdict

import pytest
import torch
from test_unet import inputs

import dit
import unet
from dit import DiT, DiTConfig, preset

DIT_XL_PARAMS = 675e6  # DiT-XL/2 (Peebles & Xie 2023, Table 4), MM-LDM's width, depth and heads
PARAM_TOLERANCE = 0.10  # the cpu DiT against the cpu U-Net, as the brief asks


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def perturbed(cfg: DiTConfig, std=0.05, seed=0, skip: str = "") -> DiT:
    """A DiT with noise added to every parameter whose name does not start with `skip`: adaLN-Zero makes an
    untrained DiT output zeros, so dependence checks need weights off that point."""
    torch.manual_seed(seed)
    model = DiT(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = std * torch.randn(p.shape, generator=g)  # drawn for every parameter: the same noise either way
            if not (skip and name.startswith(skip)):
                p.add_(noise)
    return model


def count(cfg) -> int:
    with torch.device("meta"):  # counting needs no memory or initialisation
        model = DiT(cfg) if isinstance(cfg, DiTConfig) else unet.UNet(cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("overrides, sizes", [
    ({}, [(18, 8, 112), (36, 8, 224), (18, 16, 112), (7, 4, 31)]),  # real clips, twice as long, T padded
    (dict(patch_frames=2, audio_patch=3, video_channels=3, audio_channels=5), [(7, 4, 31), (18, 8, 112)]),
])
def test_shapes_round_trip(overrides, sizes):
    """One set of weights takes any F, H, W and T (F and T padded up to whole patches and cropped back)."""
    cfg = preset("tiny", **overrides)
    model = perturbed(cfg)
    for F_, H, T in sizes:
        x, n = inputs(F_=F_, H=H, T=T, cfg=cfg)
        with torch.no_grad():
            out = model(x, n)
        for m in x:
            assert out[m].shape == x[m].shape and out[m].dtype == x[m].dtype, (m, F_, H, T)
            assert torch.isfinite(out[m]).all()


def test_patchify_round_trip():
    """unpatchify inverts patchify exactly, padding included."""
    cfg = preset("tiny", patch_frames=2, audio_patch=3)
    x, _ = inputs(F_=7, H=4, T=31, cfg=cfg)
    for m in x:
        tokens, grid = dit.patchify(m, x[m], cfg)
        assert tokens.shape[-1] == cfg.patch_values[m]
        assert torch.equal(dit.unpatchify(m, tokens, grid, x[m].shape, cfg), x[m])


def test_untrained_output_is_zero():
    """adaLN-Zero (DiT §3.2) with a zero output layer: an untrained DiT predicts exactly zero."""
    torch.manual_seed(0)
    x, n = inputs(F_=6, H=4, T=40)
    with torch.no_grad():
        out = DiT(preset("tiny"))(x, n)
    for m in x:
        assert torch.equal(out[m], torch.zeros_like(x[m]))


def test_joint_attention_cross_modal_dependence():
    """Each output depends on both inputs: the two streams attend to each other."""
    model = perturbed(preset("tiny"))
    x, n = inputs(F_=6, H=4, T=40)
    with torch.no_grad():
        out = model(x, n)
        for changed in x:
            out2 = model(dict(x, **{changed: x[changed] + torch.randn_like(x[changed])}), n)
            for m in x:
                assert (out2[m] - out[m]).abs().max() > 1e-3 * out[m].abs().max(), f"{m} ignores {changed}"


def test_token_times_align_across_modalities():
    """A video token and an audio token centred at the same second get the same rotary time phase; at the
    data's rates, frame f sits at (f + ½)/10 s and mel token j at (j + ½)·4/62.5 s, whatever the clip length."""
    cfg = preset("tiny", fps=10, mel_rate=40, audio_patch=4)  # both streams' tokens 0.1 s apart
    pos = dit.token_positions(cfg, {"video": (5, 2, 2), "audio": (5,)})
    video_times = pos["video"].view(5, 4, 3)[:, :, 0]  # (Fp, Hp·Wp)
    torch.testing.assert_close(video_times, pos["audio"][:, None, 0].expand(5, 4), rtol=0, atol=0)
    torch.testing.assert_close(pos["audio"][:, 0], (torch.arange(5) + 0.5) * 0.1)
    angles = {m: dit.rope_angles(pos[m], cfg.head_dim) for m in pos}
    time_pairs = cfg.head_dim // 4
    first_patch = angles["video"].view(5, 4, -1)[:, 0]  # (Fp, d/2): each frame's top-left patch
    torch.testing.assert_close(first_patch[:, :time_pairs], angles["audio"][:, :time_pairs], rtol=0, atol=0)
    real = dit.token_positions(preset("tiny"), {"video": (18, 4, 4), "audio": (28,)})
    frame_times = real["video"].view(18, 16, 3)[:, 0, 0]  # (Fp,)
    torch.testing.assert_close(frame_times, (torch.arange(18) + 0.5) / 10)
    torch.testing.assert_close(real["audio"][:, 0], (torch.arange(28) + 0.5) * 4 / 62.5)
    assert (real["audio"][:, 1:] == 1.5).all()  # the centre of the 4×4 patch grid


def test_rope_scores_depend_on_relative_position():
    """RoPE (Su et al. 2021): q·k after rotation is unchanged when both positions shift by the same amount,
    here 1.3 s in time and 2 rows, 5 columns in space."""
    g = torch.Generator().manual_seed(0)
    d = 16
    q, k = torch.randn(2, 1, d, generator=g), torch.randn(2, 1, d, generator=g)  # (pair, S, d)
    pos = torch.tensor([[0.25, 1.0, 0.0], [0.75, 3.0, 2.0]], dtype=torch.float64)  # (2, 3)
    scores = []
    for shift in (0.0, torch.tensor([1.3, 2.0, 5.0], dtype=torch.float64)):
        a = dit.rope_angles(pos + shift, d)  # (2, d/2)
        rq = dit.apply_rope(q[0].double(), a[:1].cos(), a[:1].sin())
        rk = dit.apply_rope(k[0].double(), a[1:].cos(), a[1:].sin())
        scores.append((rq * rk).sum())
    torch.testing.assert_close(scores[1], scores[0])


def test_length_generalisation():
    """Nothing is sized to a length: a window of twice the frames and mel steps runs and stays finite."""
    model = perturbed(preset("tiny"))
    x, n = inputs(B=1, F_=36, H=4, T=224)
    with torch.no_grad():
        out = model(x, n)
    for m in x:
        assert out[m].shape == x[m].shape and torch.isfinite(out[m]).all()


def test_deterministic_with_seed():
    outs = []
    for _ in range(2):
        model = perturbed(preset("tiny"), seed=7)
        with torch.no_grad():
            outs.append(model(*inputs(F_=6, H=4, T=40)))
    for m in outs[0]:
        assert torch.equal(outs[0][m], outs[1][m])


def test_cond_modes():
    """The conditional embedders start at zero, so cond changes nothing until they train; off that point,
    cond[m] changes exactly the examples that cond_on[m] selects, and all of them by default."""
    cfg = preset("tiny", cond_modes=True)
    x, n = inputs(F_=6, H=4, T=40)
    clean, _ = inputs(F_=6, H=4, T=40, seed=1)
    on = torch.tensor([True, False])
    with torch.no_grad():
        model = perturbed(cfg, skip="cond_embed")
        joint = model(x, n)
        for m in x:
            out = model(x, n, cond={m: clean[m]})
            assert all(torch.equal(out[k], joint[k]) for k in x), f"zero-initialised cond[{m!r}] has an effect"
        model = perturbed(cfg)
        joint = model(x, n)
        for m in x:
            out = model(x, n, cond={m: clean[m]}, cond_on={m: on})
            for k in x:
                assert not torch.allclose(out[k][0], joint[k][0]), f"cond[{m!r}] leaves {k} unchanged"
                assert torch.equal(out[k][1], joint[k][1]), f"cond[{m!r}] changes {k} where cond_on is False"
            everyone = model(x, n, cond={m: clean[m]})
            assert all(not torch.allclose(everyone[k][1], joint[k][1]) for k in x)


@pytest.mark.parametrize("call, match", [
    (lambda model, x, n: model(dict(x, video=x["video"][:, :, :3]), n), r"video must be \(B, F, 4, H, W\)"),
    (lambda model, x, n: model(dict(x, video=x["video"][..., :3, :3]), n), r"\(2, 6, 4, 3, 3\).*patch_size 2"),
    (lambda model, x, n: model(x, n[:1]), "batch sizes differ"),
    (lambda model, x, n: model(x, n, cond={"audio": x["audio"][..., :8]}), r"cond\['audio'\] must have x's shape"),
    (lambda model, x, n: model(x, n, cond={"audio": x["audio"]}, cond_on={"audio": n[:1] > 0}), r"\(B,\) = \(2,\)"),
    (lambda model, x, n: model(x, n, cond_on={"video": n > 0}), "without cond"),
])
def test_bad_input_is_one_line_value_error(call, match):
    model = DiT(preset("tiny", cond_modes=True))
    x, n = inputs(F_=6, H=4, T=40)
    with pytest.raises(ValueError, match=match) as e:
        call(model, x, n)
    assert str(e.value).startswith("dit.py: ") and "\n" not in str(e.value)


def test_cond_without_cond_modes_raises():
    x, n = inputs(F_=6, H=4, T=40)
    with pytest.raises(ValueError, match="dit.py: cond given to a DiT built without cond_modes"):
        DiT(preset("tiny"))(x, n, cond={"audio": x["audio"]})


def test_parameter_counts():
    """The cpu preset is the cpu U-Net's size on the patch-2 pixel codec (12 channels); the paper preset is
    DiT-XL's, as MM-LDM's."""
    dit_count, unet_count = count(preset("cpu", video_channels=12)), count(unet.preset("cpu", video_channels=12))
    print(f"cpu DiT {dit_count / 1e6:.3f} M, cpu U-Net {unet_count / 1e6:.3f} M parameters")
    assert abs(dit_count / unet_count - 1) <= PARAM_TOLERANCE
    paper = count(preset("paper"))
    print(f"paper DiT {paper / 1e6:.1f} M parameters")
    assert abs(paper / DIT_XL_PARAMS - 1) <= 0.01
    assert 1_000 <= count(preset("tiny")) <= 100_000


def test_backward_finite_gradients_and_checkpointing():
    """Every parameter gets a finite gradient; gradient checkpointing gives the same gradients."""
    grads = []
    for grad_checkpoint in (False, True):
        model = perturbed(preset("tiny", cond_modes=True, grad_checkpoint=grad_checkpoint)).train()
        x, n = inputs(F_=6, H=4, T=40)
        on = torch.tensor([True, False])
        out = model(x, n, cond=x, cond_on={"video": on, "audio": ~on})
        sum((out[m] ** 2).mean() for m in out).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"bad gradient for {name}"
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_trains_on_a_fixed_batch():
    """30 Adam steps from the zero-output initialisation fit a fixed target better than zero does."""
    torch.manual_seed(0)
    model = DiT(preset("tiny")).train()
    x, n = inputs(F_=4, H=4, T=16)
    target, _ = inputs(F_=4, H=4, T=16, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        out = model(x, n)
        loss = sum(((out[m] - target[m]) ** 2).mean() for m in x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_bf16_autocast():
    model = perturbed(preset("tiny"))
    x, n = inputs(F_=6, H=4, T=40)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, n)
    with torch.no_grad():
        ref = model(x, n)
    for m in x:
        assert out[m].dtype == torch.float32 and torch.isfinite(out[m]).all()
        assert (out[m] - ref[m]).abs().max() < 0.1 * ref[m].abs().max() + 1e-3


def test_config_json_round_trip_and_errors():
    cfg = preset("cpu", cond_modes=True)
    assert DiTConfig(**json.loads(json.dumps(asdict(cfg)))) == cfg
    with pytest.raises(ValueError, match=r"dit.py: unknown preset 'huge', choose one of \['cpu', 'paper', 'tiny'\]"):
        preset("huge")
    with pytest.raises(ValueError, match="dit.py: hidden 20 not divisible by heads 3"):
        preset("tiny", hidden=20, heads=3)
    with pytest.raises(ValueError, match="multiple of 8"):
        preset("tiny", hidden=24, heads=2)
    with pytest.raises(ValueError, match="dit.py: audio_patch must be positive"):
        preset("tiny", audio_patch=0)
