"""melgan.py: the official MelGAN shapes and size, HiFi-GAN losses by hand, biquad.py's augmentation against
closed forms and scipy, checkpoints (round trip, resume, errors), the Griffin-Lim fallback and a
measured training check (validation mel-L1 drops from its value at initialisation)."""
import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import biquad
import checkpoint
import melgan
import melspec

TINY = dict(ngf=8, ndf=8, n_layers_D=2)  # every code path of the full model, ~0.1 s per step at 2048 samples
SMALL = dict(ngf=16, ndf=16, n_layers_D=2)  # the slow check's model: 1.1 M generator parameters


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def tiny_cfg(**kw) -> melgan.MelGANConfig:
    return melgan.MelGANConfig(**{**TINY, "segment_length": 2048, "batch_size": 2, **kw})


# ----------------------------------------------------------------------------------------------------
# Networks
def test_generator_has_the_papers_parameter_count():
    n = melgan.count_parameters(melgan.Generator(melgan.MelGANConfig()))
    assert abs(n - melgan.PAPER_PARAMS) / melgan.PAPER_PARAMS < 0.01, f"{n} parameters, Table 5 says 4.27 M"


@pytest.mark.parametrize("T", [melgan.MIN_MEL_STEPS, 7, 112])
def test_generator_output_is_hop_times_longer(T):
    G = melgan.Generator(tiny_cfg())
    wav = G.vocode(torch.randn(2, melspec.N_MELS, T))
    assert wav.shape == (2, melspec.HOP * T)
    assert wav.abs().max() < 1  # tanh


def test_generator_says_what_is_wrong_with_its_input():
    G = melgan.Generator(tiny_cfg())
    with pytest.raises(AssertionError, match=r"mel must be \(B, 80, T\)"):
        G.vocode(torch.randn(2, 64, 10))
    with pytest.raises(AssertionError, match="T >= 4"):
        G.vocode(torch.randn(2, 80, 3))


def test_full_generator_output_length():
    G = melgan.Generator(melgan.MelGANConfig())
    assert G.vocode(torch.randn(1, melspec.N_MELS, 5)).shape == (1, 5 * melspec.HOP)


def test_discriminator_returns_three_scales_of_feature_maps():
    cfg = melgan.MelGANConfig()
    out = melgan.MultiScaleDiscriminator(cfg)(torch.randn(2, 8192))
    assert len(out) == 3
    for k, scale in enumerate(out):
        # 15-tap conv, n_layers_D strided convs, 5-tap conv, score conv
        assert len(scale) == cfg.n_layers_D + 3
        assert [f.shape[1] for f in scale] == [16, 64, 256, 1024, 1024, 1024, 1]
        assert scale[0].shape == (2, 16, 8192 // 2 ** k)  # the input average-pooled k times
        assert scale[-1].shape == (2, 1, 8192 // 2 ** k // 4 ** cfg.n_layers_D)


def test_remove_weight_norm_keeps_the_function():
    G = melgan.Generator(tiny_cfg())
    mel = torch.randn(1, melspec.N_MELS, 4)
    before = G.vocode(mel)
    after = G.remove_weight_norm().vocode(mel)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Losses, by hand
def _maps(*scores):
    """Discriminator outputs with one constant feature map (B=1, C=1, L=2) and the given score map."""
    return [[torch.full((1, 1, 2), f), torch.tensor(s).view(1, 1, -1)] for f, s in scores]


def test_losses_equal_hand_computations():
    real = _maps((1.0, [0.5, 1.5]), (2.0, [1.0, 1.0]))
    fake = _maps((0.0, [0.0, 1.0]), (2.5, [-1.0, 0.0]))
    # D: scale 0: mean(0.25, 0.25) + mean(0, 1) = 0.75; scale 1: 0 + mean(1, 0) = 0.5
    assert melgan.discriminator_loss(real, fake).item() == pytest.approx(1.25)
    # G: scale 0: mean(1, 0) = 0.5; scale 1: mean(4, 1) = 2.5
    assert melgan.generator_adversarial_loss(fake).item() == pytest.approx(3.0)
    # FM over every map, scores included: |1-0| + mean(0.5, 0.5) + |2-2.5| + mean(2, 1) = 3.5
    assert melgan.feature_matching_loss(real, fake).item() == pytest.approx(3.5)


def test_feature_matching_does_not_train_the_real_branch():
    real = [[torch.ones(1, 1, 2, requires_grad=True)]]
    fake = [[torch.zeros(1, 1, 2, requires_grad=True)]]
    melgan.feature_matching_loss(real, fake).backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None


def test_mel_loss_is_l1_of_normalised_log_mel():
    wav = 0.1 * torch.randn(2, 4096, generator=torch.Generator().manual_seed(0))
    mel = melspec.wav_to_mel(wav)
    assert melgan.mel_loss(wav, mel).item() == pytest.approx(0.0, abs=1e-7)
    assert melgan.mel_loss(wav, mel + 0.25).item() == pytest.approx(0.25, abs=1e-6)


# ----------------------------------------------------------------------------------------------------
# Biquad augmentation
def _one(x):
    return torch.tensor([x], dtype=torch.float64)


def _band_energy(wav, lo, hi):
    spec = torch.fft.rfft(wav).abs() ** 2
    f = torch.fft.rfftfreq(wav.shape[-1], 1 / melspec.SAMPLE_RATE)
    return spec[..., (f >= lo) & (f < hi)].sum(-1)


def test_peaking_with_zero_gain_is_identity():
    wav = torch.randn(3, 8192, generator=torch.Generator().manual_seed(0))
    b, a = biquad.biquad_coefficients("peaking", _one(1000.0), _one(0.0), _one(0.7))
    torch.testing.assert_close(b, a)
    out = biquad.biquad_filter(wav, b.repeat(3, 1), a.repeat(3, 1))
    torch.testing.assert_close(out, wav, rtol=0, atol=1e-6)


def test_low_shelf_raises_low_frequencies_only():
    wav = torch.randn(1, 65536, generator=torch.Generator().manual_seed(0))
    b, a = biquad.biquad_coefficients("lowshelf", _one(300.0), _one(12.0), _one(1 / math.sqrt(2)))
    out = biquad.biquad_filter(wav, b, a)
    low = 10 * math.log10(_band_energy(out, 20, 100) / _band_energy(wav, 20, 100))
    high = 10 * math.log10(_band_energy(out, 3000, 8000) / _band_energy(wav, 3000, 8000))
    assert low == pytest.approx(12.0, abs=0.5)  # the shelf's gain, well below f0
    assert high == pytest.approx(0.0, abs=0.2)  # untouched well above f0


@pytest.mark.parametrize("kind, dc_db, nyquist_db", [("lowshelf", 9.0, 0.0), ("highshelf", 0.0, 9.0),
                                                     ("peaking", 0.0, 0.0)])
def test_cookbook_gains_at_dc_and_nyquist(kind, dc_db, nyquist_db):
    b, a = biquad.biquad_coefficients(kind, _one(1000.0), _one(9.0), _one(0.9))
    ends = {"dc": (b.sum() / a.sum()).item(),  # H(z = 1)
            "nyquist": ((b[0, 0] - b[0, 1] + b[0, 2]) / (a[0, 0] - a[0, 1] + a[0, 2])).item()}  # H(z = −1)
    assert 20 * math.log10(abs(ends["dc"])) == pytest.approx(dc_db, abs=1e-6)
    assert 20 * math.log10(abs(ends["nyquist"])) == pytest.approx(nyquist_db, abs=1e-6)


@pytest.mark.parametrize("kind", biquad.BIQUAD_KINDS)
def test_frequency_domain_filter_equals_lfilter(kind):
    signal = pytest.importorskip("scipy.signal")
    wav = torch.randn(1, 16384, generator=torch.Generator().manual_seed(1))
    b, a = biquad.biquad_coefficients(kind, _one(80.0), _one(-12.0), _one(2.0))  # the slowest-decaying corner
    ours = biquad.biquad_filter(wav, b, a)
    ref = signal.lfilter(b[0].numpy(), a[0].numpy(), wav[0].double().numpy())
    torch.testing.assert_close(ours[0], torch.from_numpy(ref).float(), rtol=0, atol=1e-4)


def test_random_biquad_probability_and_peak():
    wav = 0.9 * torch.sin(torch.linspace(0, 2000, 4096)).repeat(8, 1)  # (8, 4096)
    cfg = tiny_cfg(aug_p=0.0)
    torch.testing.assert_close(biquad.random_biquad(wav, cfg, torch.Generator().manual_seed(0)), wav,
                               rtol=0, atol=1e-6)
    out = biquad.random_biquad(wav, tiny_cfg(aug_p=1.0), torch.Generator().manual_seed(0))
    assert out.abs().amax() <= 1 + 1e-6
    assert (out - wav).abs().amax(dim=1).min() > 1e-3  # every row filtered


# ----------------------------------------------------------------------------------------------------
# Checkpoints and the Vocoder
def _nets(cfg):
    G, D = melgan.Generator(cfg), melgan.MultiScaleDiscriminator(cfg)
    opt = [torch.optim.Adam(n.parameters(), lr=cfg.lr, betas=cfg.betas) for n in (G, D)]
    return G, D, opt


def test_checkpoint_round_trip_is_strict_and_self_describing(tmp_path):
    cfg = tiny_cfg()
    G, D, (oG, oD) = _nets(cfg)
    path = melgan.save_checkpoint(tmp_path, 7, G, D, oG, oD, torch.Generator())
    loaded_cfg, meta, state = melgan.read_checkpoint(tmp_path)  # the directory resolves to its newest
    assert loaded_cfg == cfg and meta["step"] == "7" and path.name == "melgan-00000007.safetensors"
    G2, D2 = melgan.Generator(loaded_cfg), melgan.MultiScaleDiscriminator(loaded_cfg)
    G2.load_state_dict(state["generator"], strict=True)
    D2.load_state_dict(state["discriminator"], strict=True)
    for a, b in [(G, G2), (D, D2)]:
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    mel = torch.randn(2, melspec.N_MELS, 6)
    torch.testing.assert_close(melgan.load_vocoder(path).vocode(mel), G.vocode(mel), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(melgan.Vocoder(path)(mel), G.vocode(mel), rtol=1e-5, atol=1e-6)


def test_old_checkpoints_are_pruned(tmp_path):
    G, D, (oG, oD) = _nets(tiny_cfg())
    for step in (1, 2, 3, 4):
        melgan.save_checkpoint(tmp_path, step, G, D, oG, oD, torch.Generator(), keep=2)
    assert [p.name for p in melgan.list_checkpoints(tmp_path)] == ["melgan-00000003.safetensors",
                                                                   "melgan-00000004.safetensors"]
    assert not list(tmp_path.glob("*.tmp")) and len(list(tmp_path.glob("*.pt"))) == 2


def test_load_vocoder_errors_are_one_line(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "something else"})
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a checkpoint")
    for path, words in [(tmp_path / "missing.safetensors", "no such"), (other, "not a MelGAN checkpoint"),
                        (junk, "not a readable safetensors"), (tmp_path, "no MelGAN checkpoint")]:
        with pytest.raises(checkpoint.CheckpointError) as e:
            melgan.load_vocoder(path)
        assert words in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_load_vocoder_rejects_another_front_end(tmp_path):
    G, D, (oG, oD) = _nets(tiny_cfg())
    path = melgan.save_checkpoint(tmp_path, 1, G, D, oG, oD, torch.Generator())
    meta = melgan.read_checkpoint(path)[1]
    save_file(load_file(str(path)), str(path),
              metadata={**meta, "front_end": json.dumps({**melgan.FRONT_END, "n_fft": 1024})})
    with pytest.raises(checkpoint.CheckpointError, match="another mel front end.*n_fft"):
        melgan.load_vocoder(path)


def test_griffin_lim_fallback_warns_and_vocodes(caplog):
    with caplog.at_level(logging.WARNING):
        vocoder = melgan.Vocoder(None, griffin_lim_iters=4)
    assert len(caplog.records) == 1 and "Griffin-Lim" in caplog.records[0].getMessage()
    assert "\n" not in caplog.records[0].getMessage()
    wav = 0.3 * torch.randn(2, 16 * melspec.HOP, generator=torch.Generator().manual_seed(0))
    out = vocoder(melspec.wav_to_mel(wav))
    assert out.shape == wav.shape and torch.isfinite(out).all()
    rms = lambda w: w.pow(2).mean(-1).sqrt()  # noqa: E731
    assert torch.allclose(rms(out), rms(wav), rtol=0.2)  # the level its mel describes, not limited here


# ----------------------------------------------------------------------------------------------------
# Training: resume, the CLI, and the measured check
def test_resume_continues_at_the_right_step_and_equals_one_run(tmp_path):
    cfg = tiny_cfg(segment_length=1024, batch_size=1)
    run = dict(val_every=2, ckpt_every=2, n_val=1)
    melgan.train("synthetic", tmp_path / "a", cfg, melgan.TrainRun(steps=4, **run), progress=False)
    melgan.train("synthetic", tmp_path / "b", cfg, melgan.TrainRun(steps=2, **run), progress=False)
    resumed = melgan.train("synthetic", tmp_path / "b", cfg, melgan.TrainRun(steps=4, **run), progress=False)
    assert resumed["step"] == 4 and [s for s, _ in resumed["val"]] == [4]  # no second step-0 validation
    assert [p.name for p in melgan.list_checkpoints(tmp_path / "b")][-1] == "melgan-00000004.safetensors"
    assert torch.load(tmp_path / "b" / "melgan-00000004.pt", weights_only=True)["step"] == 4
    state = {d: melgan.read_checkpoint(tmp_path / d)[2] for d in ("a", "b")}
    for net in ("generator", "discriminator"):
        for k, v in state["a"][net].items():
            torch.testing.assert_close(state["b"][net][k], v, rtol=0, atol=1e-6)


def test_training_starts_from_an_empty_filterbank_cache(tmp_path, monkeypatch):
    """A fresh process validates (no grad) before its first step: the cached filterbank must still allow backward."""
    monkeypatch.setattr(melspec, "_MEL_BASIS", {})
    run = melgan.TrainRun(steps=1, val_every=1, ckpt_every=1, n_val=1)
    assert melgan.train("synthetic", tmp_path, tiny_cfg(segment_length=1024, batch_size=1), run,
                        progress=False)["step"] == 1


def test_cli_trains_then_resumes_with_the_checkpoints_config(tmp_path, capsys):
    out = str(tmp_path / "run")
    melgan.main(["train", "--data", "synthetic", "--out", out, "--steps", "1", "--segment", "1024",
                 "--batch", "1", "--n-val", "1", "--val-every", "1", "--ckpt-every", "1"])
    melgan.main(["train", "--data", "synthetic", "--out", out, "--steps", "2", "--n-val", "1"])
    cfg, meta, _ = melgan.read_checkpoint(out)
    assert meta["step"] == "2" and cfg.segment_length == 1024 and cfg.ngf == 32  # not reset to 65 536
    assert (tmp_path / "run" / "samples" / "step-00000002" / "0-mel.png").exists()
    assert "val mel-L1" in capsys.readouterr().out


def test_cli_bad_data_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="error: --data nonsense: unknown"):
        melgan.main(["train", "--data", "nonsense", "--out", str(tmp_path), "--steps", "1", "--segment", "1024"])


def _training_check(tmp_path, cfg, steps):
    run = melgan.TrainRun(steps=steps, val_every=steps, ckpt_every=steps, n_val=4)
    val = dict(melgan.train("synthetic", tmp_path, cfg, run, progress=False)["val"])
    assert (tmp_path / "samples" / f"step-{steps:08d}" / "0-vocoded.wav").exists()
    assert (tmp_path / "samples" / "0-ground-truth.wav").exists()
    return val[0], val[steps]


def test_training_lowers_validation_mel_l1(tmp_path):
    """Fast check, 30 steps of 2048 samples: measured 0.671 -> 0.457."""
    before, after = _training_check(tmp_path, tiny_cfg(), 30)
    assert after < 0.85 * before, f"val mel-L1 {before:.4f} -> {after:.4f}"


@pytest.mark.slow
def test_training_lowers_validation_mel_l1_clearly(tmp_path):
    """The measured check: 300 steps, 8192-sample segments, batch 2, a 1.1 M-parameter generator;
    measured 0.747 -> 0.0995 (6.5 min on the shared 2-core machine, ~0.6 s per step when it is idle)."""
    before, after = _training_check(tmp_path, melgan.MelGANConfig(**SMALL, segment_length=8192, batch_size=2), 300)
    assert after < 0.5 * before, f"val mel-L1 {before:.4f} -> {after:.4f}"
