"""MM-LDM end to end: train.py --model mmldm (its autoencoder, then the DiT over its latents, each a resumable
run), the generator's checkpoint carrying its autoencoder, generation in windows, and sample.py in every mode."""
import shutil

import pytest
import torch
from test_sample import long_clip, sample_cli

import checkpoint
import generate
import mmldm
import pipeline
import train

TINY = ["--model", "mmldm", "--preset", "tiny", "--patch", "2", "--center", "--size", "16", "--frames", "6",
        "--batch", "4", "--num-clips", "8", "--workers", "0", "--preview-every", "0", "--log-every", "1",
        "--cond-tasks", "0.5", "--ae-steps", "2", "--steps", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mmldm")
    return out, train.train(train.parse_args([*TINY, "--out", str(out)]), progress=False)


def test_two_stages_each_a_run_and_the_generator_carries_its_autoencoder(run):
    out, ckpt = run
    ae_ckpt = checkpoint.latest(out / "autoencoder")
    ae_meta, ae_tensors = checkpoint.read(ae_ckpt)
    meta, tensors = checkpoint.read(ckpt)
    assert ae_meta["model"] == "mmldm-ae" and meta["model"] == "mmldm"
    assert meta["train"]["ae"] == str(ae_ckpt) and meta["autoencoder"]["net"] == ae_meta["net"]
    assert meta["codec"] == ae_meta["codec"] and "center" in meta["codec"]  # the autoencoder's codecs, μ included
    carried = {k[len(pipeline.AE_PREFIX):]: v for k, v in tensors.items() if k.startswith(pipeline.AE_PREFIX)}
    ema = {k[4:]: v for k, v in ae_tensors.items() if k.startswith("ema.")}
    assert carried.keys() == ema.keys() and all(torch.equal(carried[k], ema[k]) for k in ema)
    pipe = pipeline.load(ckpt)
    assert pipe.net.cfg.cond_modes and isinstance(pipe.autoencoder, mmldm.MMAutoencoder)
    lat = pipe.net_shapes(1, 6)  # the DiT denoises the latents: one video "frame", the audio latent's columns
    assert lat["video"][1] == 1 and lat["video"][2] == pipe.autoencoder.cfg.latent_channels


def test_checkpoint_round_trip_and_a_rerun_resumes(run):
    out, ckpt = run
    a, b = pipeline.load(ckpt), pipeline.load(ckpt)
    for m, n in ((a.net, b.net), (a.autoencoder, b.autoencoder)):
        assert all(torch.equal(x, y) for x, y in zip(m.state_dict().values(), n.state_dict().values()))
    ae_before = checkpoint.latest(out / "autoencoder").stat().st_mtime_ns
    again = train.train(train.parse_args([*TINY, "--out", str(out), "--steps", "3"]), progress=False)
    assert again.name == "ckpt-00000003.safetensors"
    assert checkpoint.latest(out / "autoencoder").stat().st_mtime_ns == ae_before  # the autoencoder not retrained


def test_long_generation_goes_by_training_length_windows_and_keeps_a_prefix(run):
    pipe = pipeline.load(run[1])
    clip, spf = pipe.clip, pipe.clip.samples_per_frame
    video = torch.rand(1, 14, 3, 16, 16) * 2 - 1
    audio = torch.rand(1, 14 * spf) * 0.2 - 0.1
    known = {"video": torch.arange(14)[None] < 4, "audio": torch.arange(14)[None] < 4}
    cfg = pipe.sampler(steps=2)
    torch.manual_seed(0)  # Griffin-Lim's phases
    out = generate.generate(pipe, cfg, cond={"video": video, "audio": audio}, known=known,
                            generator=torch.Generator().manual_seed(0))
    assert out["windows"] == [(0, 6), (4, 10), (8, 14)]  # clip.frames long, hop a whole block: overlap 2 frames
    assert torch.equal(out["video"][:, :4], video[:, :4]) and torch.equal(out["audio"][:, :4 * spf], audio[:, :4 * spf])
    torch.manual_seed(0)
    again = generate.generate(pipe, cfg, cond={"video": video, "audio": audio}, known=known,
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["video"], again["video"]) and torch.equal(out["audio"], again["audio"])
    assert clip.frames == 6


def test_sample_py_in_every_mode_on_mmldm(run, tmp_path):
    src, _ = long_clip(tmp_path, seconds=2.0)
    runs = {"v2a": ["--v2a", src], "a2v": ["--a2v", src], "continue": ["--continue", src, "--prefix", "0.5"],
            "v2a-prefix": ["--v2a", src, "--prefix", "0.5"], "joint": ["--joint", "1", "--seconds", "1.5"]}
    for mode, args in runs.items():
        proc = sample_cli("--ckpt", run[1], *args, "--steps", "2", "--out", tmp_path / mode)
        assert proc.returncode == 0, (mode, proc.stderr[-2000:])
        assert list((tmp_path / mode).glob("*.mp4")) and list((tmp_path / mode).glob("*.wav")), mode


def test_bad_combinations_are_one_line(run, tmp_path):
    for flags, message in ((["--contrastive", "--cond-tasks", "0"], "MM-LDM's autoencoder has its own"),
                           (["--model", "cmmd", "--preset", "cpu", "--cond-tasks", "0", "--ae", str(run[1])],
                            "--ae is MM-LDM's autoencoder"),
                           (["--ae", str(run[1])], "not an MM-LDM autoencoder checkpoint"),
                           (["--init", str(run[1])], "not fine-tuned here"),
                           (["--ae", str(checkpoint.latest(run[0] / "autoencoder")), "--size", "32"],
                            "trained with other --size")):
        with pytest.raises((ValueError, SystemExit), match=message):
            cfg = train.parse_args([*TINY, *flags, "--out", str(tmp_path / "x")])
            train.check_config(cfg)
            pipeline.run_config(cfg)


def test_a_generator_resumes_only_on_its_own_autoencoder(run, tmp_path):
    out = tmp_path / "moved"  # a run folder moved elsewhere resumes, on the autoencoder it began on
    shutil.copytree(run[0], out)
    ckpt = train.train(train.parse_args([*TINY, "--out", str(out), "--steps", "4", "--ae-steps", "3"]), progress=False)
    assert ckpt.name == "ckpt-00000004.safetensors"  # --ae-steps 3 did not retrain the autoencoder under it
    assert not (out / "autoencoder" / "ckpt-00000003.safetensors").exists()
    other = train.train(train.parse_args([*TINY, "--model", "mmldm-ae", "--cond-tasks", "0", "--steps", "1",
                                          "--out", str(tmp_path / "other-ae")]), progress=False)
    with pytest.raises(ValueError, match="trained on another autoencoder"):
        train.train(train.parse_args([*TINY, "--out", str(out), "--steps", "5", "--ae", str(other)]), progress=False)


def test_an_autoencoder_alone_is_not_sampled(run, tmp_path):
    proc = sample_cli("--ckpt", checkpoint.latest(run[0] / "autoencoder"), "--joint", "1", "--out", tmp_path)
    assert proc.returncode != 0 and "an MM-LDM autoencoder alone" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
