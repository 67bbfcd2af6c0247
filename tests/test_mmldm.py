"""Checks of MM-LDM's multi-modal autoencoder (mmldm.py; MM-LDM §3.2, Fig. 3) on CPU with tiny configs."""
import json
import math
from dataclasses import asdict

import pytest
import torch

import checkpoint
import diffusion
import dit
import mmldm
import sampling
from mmldm import MMAutoencoder, preset

DIFFUSION = diffusion.Diffusion(diffusion.DiffusionConfig())


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def clips(B=2, F=6, T=40, C=12, M=16, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(B, F, C, 8, 8, generator=g), "audio": torch.randn(B, M, T, generator=g)}


def tiny(**overrides) -> MMAutoencoder:
    torch.manual_seed(0)
    return MMAutoencoder(preset("tiny", video_channels=12, **overrides))


def perturbed(ae: MMAutoencoder, std=0.05, seed=1) -> MMAutoencoder:
    """Noise on every parameter: the zero-initialised outputs make an untrained decoder's output zeros, so
    dependence checks need weights off that point."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ae.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return ae.eval()


@pytest.mark.parametrize("F, T", [(6, 40), (18, 112), (5, 37)])  # T = 37 is padded to whole mel patches
def test_shapes_at_each_stage(F, T):
    ae, x0 = tiny(), clips(F=F, T=T)
    cfg = ae.cfg
    post = ae.posterior(x0)
    assert post["video"][0].shape == (2, cfg.latent_channels, 4, 4)  # 8 × 8 frames, one stride-2 level
    assert post["audio"][0].shape == (2, cfg.latent_channels, 2, math.ceil(math.ceil(T / 4) / 2))  # 16 × T mel, p = 4
    assert all(m.shape == lv.shape for m, lv in post.values())
    z = ae.encode(x0)
    sem = ae.semantic(z)
    assert {k: v.shape[:2] for k, v in sem.items()} == {k: (2, cfg.semantic_dim) for k in sem}
    assert ae.classify(sem).shape == (2, cfg.num_classes)
    index = (torch.arange(F) / F).expand(2, F)
    out = ae.decoding(z, sem, torch.tensor([0, 1]), index)(x0, torch.tensor([10, 900]))
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in x0.items()}


def test_untrained_decoder_outputs_zero():
    """Zero-initialised last convolutions: the decoder starts at zero, as the DiT and the U-Nets do."""
    ae, x0 = tiny(), clips()
    z = ae.encode(x0)
    out = ae.decoding(z, ae.semantic(z), torch.tensor([0, 1]), torch.zeros(2, 6))(x0, torch.tensor([5, 500]))
    assert all(torch.count_nonzero(v) == 0 for v in out.values())


def test_what_reaches_the_decoder():
    """A frame's decoding depends on its index; the mel's on the video's semantic tokens (the cross-modal
    context); neither on the other modality's noisy input (each image is denoised on its own)."""
    ae, x0 = perturbed(tiny()), clips()
    z = ae.encode(x0)
    n, classes = torch.tensor([300, 300]), torch.tensor([0, 1])
    index = (torch.arange(6) / 6).expand(2, 6)

    def run(z=z, index=index, x=x0):
        with torch.no_grad():
            return ae.decoding(z, ae.semantic(z), classes, index)(x, n)

    base = run()
    moved_index = run(index=index.flip(1))
    assert not torch.allclose(moved_index["video"], base["video"], atol=1e-5)
    other_video = run(z={"video": z["video"] + 1, "audio": z["audio"]})
    assert not torch.allclose(other_video["audio"], base["audio"], atol=1e-5)
    other_noise = run(x={"video": x0["video"], "audio": x0["audio"] + 1})
    assert torch.equal(other_noise["video"], base["video"])


def toy(B: int, seed=0) -> dict:
    """Clips whose video and audio each show a fixed random pattern of one shared 4-number code per clip, plus a
    little noise: something an autoencoder can compress and a contrastive head can match, unlike white noise.
    (Patterns, not amplitudes: the GroupNorms remove a clip's overall scale.)"""
    g = torch.Generator().manual_seed(seed)
    code = torch.randn(B, 4, generator=g)  # (B, 4): what a clip's two streams share
    video = (code @ torch.randn(4, 12 * 8 * 8, generator=g)).view(B, 1, 12, 8, 8).expand(B, 6, 12, 8, 8)
    audio = (code @ torch.randn(4, 16 * 40, generator=g)).view(B, 16, 40)
    return {"video": video + 0.1 * torch.randn(B, 6, 12, 8, 8, generator=g),
            "audio": audio + 0.1 * torch.randn(B, 16, 40, generator=g)}


def test_reconstruction_error_falls_in_a_short_run():
    """30 Adam steps on four toy clips at fixed steps n, noise and frames (the generator reseeded): the
    decoder's error falls well below the zero output's, so gradients reach it through the whole autoencoder."""
    ae, x0 = tiny(cond_drop=0.0), toy(4)
    classes = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss, terms = ae.loss(DIFFUSION, x0, classes, generator=torch.Generator().manual_seed(7))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(terms["decoder"].item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_contrastive_head_ranks_matched_pairs_after_training():
    """Latents of a toy set in which each clip's video and audio latents show one shared random code: L_co
    trains the projectors and heads until each video scores its own audio above every other clip's, and,
    with the latents detached (MM-LDM), leaves the encoders alone."""
    ae = tiny()
    g = torch.Generator().manual_seed(0)
    code, Z = torch.randn(8, 4, generator=g), ae.cfg.latent_channels  # (B, 4): what a clip's two streams share
    z = {"video": (code @ torch.randn(4, Z * 16, generator=g)).view(8, Z, 4, 4),
         "audio": (code @ torch.randn(4, Z * 10, generator=g)).view(8, Z, 2, 5)}
    z = {k: (v + 0.1 * torch.randn(v.shape, generator=g)).requires_grad_() for k, v in z.items()}
    opt = torch.optim.Adam([*ae.projectors.parameters(), *ae.contrast.parameters()], lr=3e-3)
    for _ in range(60):
        loss = ae.contrast(ae.semantic(z))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(v.grad is None for v in z.values())  # detached: no gradient reaches the encoders' latents
    with torch.no_grad():
        e = ae.contrast.embed(ae.semantic(z))
    sim = e["video"] @ e["audio"].T  # (B, B)
    shuffled = sim.masked_fill(torch.eye(8, dtype=torch.bool), float("-inf")).max(1).values
    assert (sim.diag() > shuffled).all(), sim


def test_decoding_samples_whole_clips_deterministically():
    ae, x0 = perturbed(tiny()), clips()
    z = ae.encode(x0)
    shapes = {k: tuple(v.shape) for k, v in x0.items()}
    runs = [ae.decode(DIFFUSION, z, shapes, generator=torch.Generator().manual_seed(4), sampler="ddim", steps=3)
            for _ in range(2)]
    assert {k: v.shape for k, v in runs[0].items()} == {k: torch.Size(s) for k, s in shapes.items()}
    assert all(torch.equal(runs[0][k], runs[1][k]) and runs[0][k].isfinite().all() for k in shapes)


def test_checkpoint_round_trip(tmp_path):
    """The config travels as JSON in the safetensors metadata (tuples come back as lists and are restored);
    the rebuilt autoencoder loads strictly and gives the same latents and decoder outputs."""
    ae, x0 = perturbed(tiny()), clips()
    path = checkpoint.save(tmp_path / "ae.safetensors", ae.state_dict(), {"mmldm": asdict(ae.cfg)})
    config, tensors = checkpoint.read(path)
    again = checkpoint.load_strict(MMAutoencoder(mmldm.MMAEConfig(**json.loads(json.dumps(config["mmldm"])))),
                                   tensors, "", path).eval()
    assert again.cfg == ae.cfg
    z, z2 = ae.encode(x0), again.encode(x0)
    assert all(torch.equal(z[k], z2[k]) for k in z)
    index, n, classes = torch.zeros(2, 6), torch.tensor([3, 700]), torch.tensor([1, 0])
    with torch.no_grad():
        a = ae.decoding(z, ae.semantic(z), classes, index)(x0, n)
        b = again.decoding(z2, again.semantic(z2), classes, index)(x0, n)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("call, match", [
    (lambda ae: ae.loss(DIFFUSION, {"video": torch.zeros(1, 6, 12, 8, 8)}, torch.zeros(1).long()), "both modalities"),
    (lambda ae: ae.encode({}), "video, audio"),
    (lambda ae: ae.encode({"video": torch.zeros(1, 6, 3, 8, 8), "audio": torch.zeros(1, 16, 40)}), "channels"),
    (lambda ae: ae.encode({"video": torch.zeros(1, 6, 12, 8, 8), "audio": torch.zeros(1, 15, 40)}), "bins"),
    (lambda ae: ae.encode({"video": torch.zeros(1, 12, 8, 8), "audio": torch.zeros(1, 16, 40)}), "5 dims"),
    (lambda ae: preset("huge"), "unknown preset"),
    (lambda ae: preset("tiny", cond_drop=1.0), "cond_drop"),
    (lambda ae: preset("tiny", dec_attention=(5,)), "dec_attention"),
])
def test_bad_input_is_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call(tiny())
    assert "\n" not in str(e.value)


def test_classes_of_synthetic_kinds():
    assert mmldm.classes_of({"tempo": torch.tensor([0.0, 120.0, 95.5, 0.0])}).tolist() == [0, 1, 1, 0]
    assert mmldm.classes_of({"audio": torch.zeros(3, 100)}).tolist() == [0, 0, 0]  # data without classes


def test_one_modality_encodes_as_in_a_pair():
    ae, x0 = perturbed(tiny()), clips()
    pair = ae.encode(x0)
    for k in x0:  # the encoders are per modality: v2a's and a2v's known latent alone is the pair's
        assert torch.equal(ae.encode({k: x0[k]})[k], pair[k])


def test_key_frames_span_the_clip():
    assert mmldm.key_frames(16, 4).tolist() == [0, 5, 10, 15]  # MM-LDM's content_frame_idx
    assert mmldm.key_frames(3, 4).tolist() == [0, 1, 2]


def test_the_generator_runs_on_the_latents_and_the_decoder_returns_clips():
    """MM-LDM's two stages at a tiny size, untrained: the clip's latents as the modality dict, dit.DiT over them
    with a trained condition (video→audio: the video latent known), and the decoder back to the codec's shapes."""
    ae, x0 = perturbed(tiny()), clips(F=6, T=40)
    shapes = {k: tuple(v.shape) for k, v in x0.items()}
    z = ae.encode(x0)
    assert {k: tuple(v.shape) for k, v in z.items()} == mmldm.latent_shapes(ae.cfg, shapes)
    rows = z["audio"].shape[2]
    x = mmldm.as_modalities(z)
    assert x["video"].shape == (2, 1, *z["video"].shape[1:]) and x["audio"].shape[1] == z["audio"].shape[1] * rows
    assert all(torch.equal(z[k], v) for k, v in mmldm.from_modalities(x, rows).items())
    gen = dit.DiT(mmldm.generator_config(ae.cfg, mmldm.latent_shapes(ae.cfg, shapes), duration=0.6, name="tiny"))
    out = sampling.sample(DIFFUSION, gen, {"audio": x["audio"].shape}, cond={"video": x["video"]}, sampler="ddim",
                          steps=2, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(out["video"], x["video"]) and out["audio"].shape == x["audio"].shape
    clip = ae.decode(DIFFUSION, mmldm.from_modalities(out, rows), shapes, sampler="ddim", steps=2,
                     generator=torch.Generator().manual_seed(1))
    assert {k: tuple(v.shape) for k, v in clip.items()} == shapes
