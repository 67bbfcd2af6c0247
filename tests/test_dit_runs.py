"""The DiT as a second backbone end to end: train.py --model dit (with and without MM-LDM's trained
conditional modes), its checkpoint, the sampler feeding a trained condition, sample.py in every mode, and the
paper-size network for one step on SD-VAE latents."""
import pytest
import torch
from test_sample import long_clip, sample_cli

import diffusion
import dit
import pipeline
import sampling
import train

TINY_DIT = ["--model", "dit", "--preset", "tiny", "--patch", "2", "--center", "--size", "16", "--frames", "6",
            "--batch", "4", "--num-clips", "8", "--workers", "0", "--preview-every", "0", "--log-every", "1"]


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("dit")
    return train.train(train.parse_args([*TINY_DIT, "--cond-tasks", "0.5", "--out", str(out), "--steps", "2"]),
                       progress=False)


def test_draw_tasks_gives_each_example_one_task():
    x0 = {"video": torch.zeros(4000, 1)}
    known = train.draw_tasks(0.5, x0, torch.Generator().manual_seed(0))
    v2a, a2v = known["video"], known["audio"]
    assert not (v2a & a2v).any()  # one known modality at most: v2a, a2v or joint
    assert abs(v2a.float().mean() - 0.25) < 0.03 and abs(a2v.float().mean() - 0.25) < 0.03


def test_trained_condition_loss_leaves_out_the_known_modality():
    net = dit.DiT(dit.preset("tiny", video_channels=3, cond_modes=True))
    for p in [*net.final.parameters(), *net.blocks.parameters()]:  # past adaLN-Zero: the streams meet
        torch.nn.init.normal_(p, std=0.1)
    diff = diffusion.Diffusion(diffusion.DiffusionConfig())
    x0 = {"video": torch.randn(2, 2, 3, 4, 4), "audio": torch.randn(2, 80, 8)}
    known = {"video": torch.tensor([True, True]), "audio": torch.tensor([False, False])}  # v2a for both
    loss, terms = diff.joint_loss(net, x0, generator=torch.Generator().manual_seed(0), known=known)
    assert terms["video"] == 0 and terms["audio"] > 0
    loss.backward()  # the clean video reaches the loss through its embedder, the audio tokens and the gates
    grad = {k: net.cond_embed[k].weight.grad.abs().sum() for k in ("video", "audio")}
    assert grad["video"] > 0 and grad["audio"] == 0


class Recorder(torch.nn.Module):
    """A network that records the keyword arguments it is called with."""

    def __init__(self, cond_modes: bool):
        super().__init__()
        self.cfg, self.calls = dit.DiTConfig(cond_modes=cond_modes), []

    def forward(self, x, n, **kw):
        self.calls.append(kw)
        return {k: torch.zeros_like(v) for k, v in x.items()}


@pytest.mark.parametrize("cond_modes", [True, False])
def test_the_sampler_feeds_a_trained_condition_only_to_a_model_that_has_one(cond_modes):
    diff = diffusion.Diffusion(diffusion.DiffusionConfig())
    shapes = {"video": (2, 2, 3, 4, 4), "audio": (2, 80, 8)}
    video = torch.rand(shapes["video"]) * 2 - 1
    for cond, mask, fed in (({"video": video}, {}, cond_modes),  # v2a: the video known whole
                            ({"video": video}, {"video": torch.tensor([[True, False]] * 2)}, False),  # continuation
                            ({}, {}, False)):  # joint
        net = Recorder(cond_modes)
        sampling.sample(diff, net, shapes, sampling.SamplerConfig(steps=2), cond=cond, mask=mask, progress=False,
                        generator=torch.Generator().manual_seed(0))
        assert all(("cond" in kw) == fed for kw in net.calls)
        if fed:
            assert torch.equal(net.calls[0]["cond"]["video"], video)


def test_a_conditional_mode_checkpoint_round_trips(cond_ckpt):
    pipe = pipeline.load(cond_ckpt, weights="model")
    assert isinstance(pipe.net, dit.DiT) and pipe.net.cfg.cond_modes
    assert pipe.config["train"]["cond_tasks"] == 0.5 and pipe.config["model"] == "dit"
    again = pipeline.load(cond_ckpt, weights="model")
    assert all(torch.equal(a, b) for a, b in zip(pipe.net.state_dict().values(), again.net.state_dict().values()))


def test_sample_py_in_every_mode_on_a_dit(cond_ckpt, tmp_path):
    src, _ = long_clip(tmp_path, seconds=2.0)
    runs = {"v2a": ["--v2a", src], "a2v": ["--a2v", src], "continue": ["--continue", src, "--prefix", "0.5"],
            "joint": ["--joint", "1", "--seconds", "1.5"]}
    for mode, args in runs.items():
        proc = sample_cli("--ckpt", cond_ckpt, *args, "--steps", "2", "--out", tmp_path / mode)
        assert proc.returncode == 0, (mode, proc.stderr[-2000:])
        assert list((tmp_path / mode).glob("*.mp4")), mode


def test_bad_combinations_are_one_line(tmp_path):
    for flags, message in ((["--model", "cmmd", "--cond-tasks", "0.5"], "trained conditional modes are the DiT's"),
                           ([*TINY_DIT, "--cond-tasks", "0.5", "--contrastive"], "--cond-tasks with --contrastive"),
                           ([*TINY_DIT, "--no-fusion"], "the DiT's streams meet"),
                           ([*TINY_DIT, "--cond-tasks", "1.5"], "cond-tasks")):
        with pytest.raises((ValueError, SystemExit), match=message):
            cfg = train.parse_args([*TINY_DIT[2:], *flags, "--out", str(tmp_path / "x"), "--steps", "1"])
            train.check_config(cfg)
            pipeline.run_config(cfg)


def test_paper_width_dit_trains_a_step_on_sd_latents(tmp_path, monkeypatch):
    """The paper preset's width and heads (MM-LDM's DiT-XL) at depth 2 on SD-VAE latents of 16 px frames."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae_dir = tmp_path / "vae"
    diffusers.AutoencoderKL(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4,
                            norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(vae_dir)
    monkeypatch.setitem(dit.PRESETS, "paper", {"depth": 2})
    cfg = train.parse_args(["--model", "dit", "--preset", "paper", "--vae", "sd", "--vae-path", str(vae_dir),
                            "--size", "16", "--frames", "2", "--batch", "1", "--num-clips", "2", "--workers", "0",
                            "--preview-every", "0", "--steps", "1", "--out", str(tmp_path / "run")])
    ckpt = train.train(cfg, progress=False)
    pipe = pipeline.load(ckpt, vae_path=str(vae_dir))
    assert (pipe.net.cfg.hidden, pipe.net.cfg.heads, pipe.net.cfg.video_channels) == (1152, 16, 4)
