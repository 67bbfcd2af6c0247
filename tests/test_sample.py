"""sample.py on a user's files (CMMD §3; the continuation tasks of MM-LDM): the user's own video back with a
generated soundtrack of its whole length, any length window by window, continuation, --ckpt resolution,
many files in one call, and one-line errors."""
import json
import os
import subprocess
import sys

import av
import pytest
import torch

import checkpoint
import data
import generate
import media
import melspec
import pipeline
import sampling
import synthetic
import train
from conftest import FIXTURES, ROOT, shared_file

TINY = ["--preset", "tiny", "--size", "16", "--frames", "6", "--batch", "2", "--num-clips", "8", "--workers", "0",
        "--preview-every", "0", "--log-every", "5"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    return train.train(train.parse_args([*TINY, "--out", str(out), "--steps", "1"]), progress=False)


@pytest.fixture(scope="module")
def pipe(tiny_ckpt):
    return pipeline.load(tiny_ckpt)


def sample_cli(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def streams(path):
    with av.open(str(path)) as c:
        return [(s.type, s.codec_context.name, float(s.duration * s.time_base) if s.duration else None,
                 getattr(s.codec_context, "width", None), getattr(s.codec_context, "height", None),
                 s.average_rate if s.type == "video" else None, bool(s.disposition & av.stream.Disposition.default))
                for s in c.streams]


def packets(path):
    with av.open(str(path)) as c:
        return [(p.pts, bytes(p)) for p in c.demux(c.streams.video[0]) if p.size]


def long_clip(tmp_path, seconds=12.4, seed=3):
    """A long synthetic sounding video: bounce windows laid end to end."""
    clip = data.ClipConfig(frames=round(seconds * 10), size=16, margin=0)
    item = synthetic.synthetic_clip(seed, clip, "bounce")
    return media.write_mp4(tmp_path / "long.mp4", item["video"], item["audio"]), item


# ---- v2a: the user's video back ----------------------------------------------------------------------------

def test_v2a_returns_the_users_video_with_a_soundtrack_of_its_length(tiny_ckpt, tmp_path):
    bunny = shared_file(FIXTURES / "bigbuckbunny.mp4")
    proc = sample_cli("--ckpt", tiny_ckpt, "--v2a", bunny, "--steps", "2", "--keep-audio", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "bigbuckbunny_v2a.mp4"
    assert str(out) in proc.stdout and (tmp_path / "bigbuckbunny_v2a_mel.png").exists()
    (vtype, vcodec, vdur, w, h, rate, _), gen, kept = streams(out)
    src = streams(bunny)
    assert (vtype, vcodec, w, h, rate) == ("video", "h264", 1280, 720, 25)
    assert abs(vdur - src[0][2]) < 1 / 25
    assert gen[0] == "audio" and gen[6] and abs(gen[2] - src[0][2]) < 0.1  # the default track, the whole length
    assert kept[0] == "audio" and not kept[6]  # --keep-audio: the original, second and not default
    assert packets(out) == packets(bunny)  # copied, not re-encoded
    assert "video copied" in proc.stdout


def test_long_clips_get_outputs_of_their_length(tiny_ckpt, tmp_path):
    src, _ = long_clip(tmp_path)
    for mode in ("v2a", "a2v"):
        proc = sample_cli("--ckpt", tiny_ckpt, f"--{mode}", src, "--steps", "2", "--out", tmp_path / mode)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = media.read_av(tmp_path / mode / f"long_{mode}.mp4", size=16)
        assert abs(got.duration - 12.4) < 0.15, (mode, got.duration)
        assert abs(got.audio.numel() / 16000 - 12.4) < 0.1 and abs(got.video.shape[0] - 124) <= 1


# ---- windows and the known part ------------------------------------------------------------------------------

def test_windows_cover_and_overlap():
    assert generate.windows(20, 36, 12, 4) == [(0, 20)]
    spans = generate.windows(124, 36, 12, 4)
    assert spans[0] == (0, 36) and spans[-1][1] == 124
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert b0 % 4 == 0 and a1 - b0 >= 12 and b0 > a0
    assert all(36 <= b - a < 40 for a, b in spans)
    assert generate.block_frames(data.ClipConfig(), pipeline.MelCodec()) == 4
    assert generate.block_frames(data.ClipConfig(), pipeline.WaveCodec()) == 1


def test_each_window_keeps_what_the_one_before_generated(pipe, monkeypatch):
    """Temporal inpainting: a window's overlap with the one before is given as known, equal to what that
    window generated, and comes back unchanged."""
    calls, real = [], sampling.sample

    def spy(diffusion, model, shapes, cfg=None, **kw):
        out = real(diffusion, model, shapes, cfg, **kw)
        calls.append((kw["cond"], kw["mask"], out))
        return out

    monkeypatch.setattr(sampling, "sample", spy)
    v = torch.rand(1, 64, 3, 16, 16) * 2 - 1
    result = generate.generate(pipe, sampling.SamplerConfig(steps=2), cond={"video": v},
                               generator=torch.Generator().manual_seed(0))
    assert result["windows"] == [(0, 36), (24, 60), (28, 64)] and len(calls) == 3
    (_, _, first), (cond, mask, second), _ = calls
    overlap = mask["audio"][0]  # (T,) of the second window
    t0 = pipe.codecs["audio"].steps(24 * 1600)
    n = int(overlap.sum())
    assert n > 0 and overlap[:n].all() and not overlap[n:].any()
    assert torch.equal(cond["audio"][..., :n], first["audio"][..., t0:t0 + n])  # what window 1 generated
    assert torch.equal(second["audio"][..., :n], cond["audio"][..., :n])  # kept
    assert torch.equal(result["video"], v) and result["audio"].shape == (1, 64 * 1600)


def test_a_prefix_longer_than_a_window_is_kept_and_the_rest_generated(pipe, monkeypatch):
    """Windows wholly inside the kept prefix are skipped, not sampled; those after it generate the rest."""
    calls, real = [], sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda *args, **kw: calls.append(kw["mask"]) or real(*args, **kw))
    g = torch.Generator().manual_seed(0)
    v, a = torch.rand(1, 80, 3, 16, 16, generator=g) * 2 - 1, torch.rand(1, 80 * 1600, generator=g) - 0.5
    prefix = torch.arange(80)[None] < 50  # 5 s kept: past the first window (0, 36)
    out = generate.generate(pipe, sampling.SamplerConfig(steps=2), cond={"video": v, "audio": a},
                            known={"audio": prefix}, generator=torch.Generator().manual_seed(1))
    assert out["windows"][0] == (0, 36) and len(calls) == len(out["windows"]) - 1  # the first window skipped
    assert torch.equal(out["audio"][:, :50 * 1600], a[:, :50 * 1600])
    assert not torch.equal(out["audio"][:, 60 * 1600:], a[:, 60 * 1600:])


def test_windows_always_cover_the_input():
    """Every frame lies in a window; a window shorter than the codec's block is refused before any work."""
    for frames, window, overlap, block in [(37, 4, 0, 4), (100, 7, 3, 4), (50, 36, 12, 4), (9, 1, 0, 1), (64, 5, 4, 4)]:
        covered = set()
        for f0, f1 in generate.windows(frames, window, overlap, block):
            covered |= set(range(f0, f1))
        assert covered == set(range(frames)), (frames, window, overlap, block)
    with pytest.raises(ValueError, match="shorter than the audio codec's block of 4"):
        generate.windows(10, 1, 0, 4)


def test_generated_audio_is_brought_to_its_peak_not_clipped(pipe, monkeypatch):
    """A vocoder that overshoots ±1 gives a soundtrack scaled to −1 dBFS, its shape kept, never clamped."""
    loud = torch.sin(torch.linspace(0, 200, 36 * 1600))[None] * 3.0  # peak 3: would clip at ±1
    monkeypatch.setattr(pipe.codecs["audio"], "decode", lambda mel: loud.expand(mel.shape[0], -1).clone())
    v = torch.rand(1, 36, 3, 16, 16) * 2 - 1
    wav = generate.generate(pipe, sampling.SamplerConfig(steps=1), cond={"video": v})["audio"]
    peak = 10 ** (melspec.PEAK_DBFS / 20)
    assert abs(wav.abs().max().item() - peak) < 1e-6
    assert torch.allclose(wav, loud * peak / 3.0, atol=1e-6)  # scaled whole, no sample flattened
    assert torch.equal(melspec.limit_peak(loud / 10), loud / 10)  # a quiet one is left as it is


@pytest.mark.parametrize("known,kept", [("audio", "video"), ("video", "audio")])
def test_continuation_returns_the_prefix_unchanged(pipe, known, kept):
    """Audio continuation (video whole, audio's first 12 frames) and video continuation, and both at once."""
    g = torch.Generator().manual_seed(0)
    cond = {"video": torch.rand(2, 50, 3, 16, 16, generator=g) * 2 - 1,
            "audio": torch.rand(2, 50 * 1600, generator=g) - 0.5}
    prefix = torch.arange(50)[None].expand(2, -1) < 12
    for masks in ({known: prefix}, {"video": prefix, "audio": prefix}):
        out = generate.generate(pipe, sampling.SamplerConfig(sampler="dpmsolver++", steps=2), cond=cond, known=masks,
                              generator=torch.Generator().manual_seed(1))
        assert out["video"].shape == (2, 50, 3, 16, 16) and out["audio"].shape == (2, 50 * 1600)
        assert torch.equal(out["video"][:, :12], cond["video"][:, :12])
        assert torch.equal(out["audio"][:, :12 * 1600], cond["audio"][:, :12 * 1600])
        for k in masks:
            assert not torch.equal(out[k], cond[k])  # the rest is generated


def test_a_prefix_longer_than_the_first_window_from_the_command(tiny_ckpt, tmp_path):
    """--prefix 4 on a 5 s clip: the first window (3.6 s) lies inside the kept sound and is skipped."""
    src, item = long_clip(tmp_path, seconds=5.0)
    proc = sample_cli("--ckpt", tiny_ckpt, "--v2a", src, "--prefix", "4", "--steps", "2", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    wav = media.read_av(tmp_path / "out" / "long_v2a.wav", need_video=False).audio
    assert abs(wav.shape[0] - 5 * 16000) < 160
    given = media.read_av(src, need_video=False).audio  # the input's sound as sample.py reads it (AAC decoded)
    torch.testing.assert_close(wav[:4 * 16000], given[:4 * 16000], atol=1 / 16000, rtol=0)  # kept, to 16-bit wav


def test_continuation_and_long_joint_commands(tiny_ckpt, tmp_path):
    src, item = long_clip(tmp_path, seconds=4.0)
    runs = {"v2a": ["--v2a", src, "--prefix", "1.5"], "a2v": ["--a2v", src, "--prefix", "1.5"],
            "continue": ["--continue", src, "--prefix", "1.5", "--seconds", "6"],
            "joint": ["--joint", "2", "--seconds", "5"]}
    for mode, args in runs.items():
        proc = sample_cli("--ckpt", tiny_ckpt, *args, "--steps", "2", "--out", tmp_path / mode)
        assert proc.returncode == 0, (mode, proc.stderr[-2000:])
    v2a = media.read_av(tmp_path / "v2a" / "long_v2a.wav", need_video=False)
    assert abs(v2a.duration - 4.0) < 0.05
    cont = media.read_av(tmp_path / "continue" / "long_continue.mp4", size=16)
    assert abs(cont.duration - 6.0) < 0.15
    joint = sorted((tmp_path / "joint").glob("joint_*.mp4"))
    assert len(joint) == 2 and abs(media.probe(joint[0])["duration"] - 5.0) < 0.15


# ---- --ckpt --------------------------------------------------------------------------------------------------

def test_ckpt_resolution(tiny_ckpt, tmp_path):
    t = torch.arange(16000) / 16000
    wav = media.write_wav(tmp_path / "tone.wav", 0.5 * torch.sin(2 * torch.pi * 440 * t))
    # no flag, no checkpoint anywhere: one line saying how to make one
    proc = sample_cli("--a2v", wav, "--steps", "1", "--out", tmp_path / "o", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "python demo.py" in lines[0], proc.stderr
    # no flag, a checkpoint under runs/: used, and named
    run = tmp_path / "runs" / "demo" / "model"
    run.mkdir(parents=True)
    (run / tiny_ckpt.name).write_bytes(tiny_ckpt.read_bytes())
    proc = sample_cli("--a2v", wav, "--steps", "1", "--out", tmp_path / "o", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"newest checkpoint under runs/: runs/demo/model/{tiny_ckpt.name}" in proc.stderr
    assert (tmp_path / "o" / "tone_a2v.mp4").exists()
    # a Hub repo id, offline: one line saying how to place the file
    proc = sample_cli("--ckpt", "someone/cmmd-aist", "--a2v", wav, cwd=tmp_path,
                      env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "someone/cmmd-aist" in lines[0] and "--ckpt PATH" in lines[0]


def test_hub_repo_id_from_the_local_cache(tiny_ckpt, tmp_path, monkeypatch):
    """A repo id resolves through huggingface_hub to the file in its cache, laid out as a download leaves it."""
    snap = tmp_path / "hub" / "models--someone--cmmd-tiny" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / checkpoint.HUB_FILENAME).write_bytes(tiny_ckpt.read_bytes())
    (tmp_path / "hub" / "models--someone--cmmd-tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--cmmd-tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    path, how = checkpoint.resolve("someone/cmmd-tiny")
    assert path.read_bytes() == tiny_ckpt.read_bytes() and "Hugging Face Hub" in how
    assert pipeline.load(path).clip.size == 16


# ---- many files, bad files -----------------------------------------------------------------------------------

def test_a_bad_file_among_many_is_skipped(tiny_ckpt, tmp_path):
    good = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        good.append(media.write_mp4(tmp_path / name / "clip.mp4", torch.zeros(8, 3, 16, 16, dtype=torch.uint8),
                                   torch.zeros(12800)))
    (tmp_path / "bad.mp4").write_text("not a video")
    proc = sample_cli("--ckpt", tiny_ckpt, "--v2a", *good, tmp_path / "bad.mp4", "--steps", "1",
                      "--out", tmp_path / "o")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.mp4: not a readable media file" in errors[0] and "Traceback" not in proc.stderr
    # unique names
    assert sorted(p.name for p in (tmp_path / "o").glob("*.mp4")) == ["a_clip_v2a.mp4", "b_clip_v2a.mp4"]
    assert "2 of 3 inputs done" in proc.stderr


def test_bad_input_one_line(tiny_ckpt, tmp_path):
    bikes = shared_file(FIXTURES / "bikes.mp4")
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "empty.wav").write_bytes(b"")
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(other))
    wav = media.write_wav(tmp_path / "t.wav", torch.zeros(16000))
    cases = [
        (["--ckpt", tiny_ckpt, "--v2a", tmp_path / "missing.mp4"], "missing.mp4: no such file"),
        (["--ckpt", tiny_ckpt, "--v2a", tmp_path / "notes.mp4"], "notes.mp4: not a readable media file"),
        (["--ckpt", tiny_ckpt, "--a2v", tmp_path / "empty.wav"], "empty.wav: empty file"),
        (["--ckpt", tiny_ckpt, "--a2v", bikes], "bikes.mp4: no audio stream"),
        (["--ckpt", tiny_ckpt, "--v2a", wav], "t.wav: no video stream"),
        (["--ckpt", tiny_ckpt, "--v2a", wav, "--prefix", "5"], "t.wav: no video stream"),
        (["--ckpt", tmp_path / "none.safetensors", "--joint", "1"], "none.safetensors: no such cmmd checkpoint"),
        (["--ckpt", other, "--joint", "1"], "other.safetensors: not a cmmd checkpoint"),
        (["--ckpt", tmp_path / "notes.mp4", "--joint", "1"], "notes.mp4: not a readable safetensors"),
        (["--ckpt", tiny_ckpt, "--joint", "1", "--device", "foo"], "--device 'foo'"),
        (["--ckpt", tiny_ckpt, "--joint", "1", "--steps", "0"], "steps must be a positive integer"),
        (["--ckpt", tiny_ckpt, "--joint", "-1"], "--joint must be at least 1"),
        (["--ckpt", tiny_ckpt, "--joint", "1", "--out", wav], "t.wav: exists and is not a directory"),
        (["--ckpt", tiny_ckpt, "--joint", "1", "--window", "1", "--overlap", "0", "--out", tmp_path / "w1"],
         "--window 1 frames is shorter than the audio codec's block of 4 frames"),
    ]
    for args, message in cases:
        proc = sample_cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], (args, proc.stderr[-1500:])


def test_run_settings_beside_the_checkpoint(tmp_path):
    """sampling.json beside a run's checkpoints gives the settings chosen for it per mode; a bad one is one line."""
    ckpt = tmp_path / "ckpt-00000001.safetensors"
    assert pipeline.run_settings(ckpt, "v2a") == {}
    chosen = {"sampler": "ddim", "steps": 25, "guidance": 3.0}
    (tmp_path / pipeline.RUN_SETTINGS).write_text(json.dumps({"v2a": chosen}))
    assert pipeline.run_settings(ckpt, "v2a") == chosen and pipeline.run_settings(ckpt, "a2v") == {}
    for bad in ('{"v2a": {"guidance": -1}}', '{"v2a": {"lambda": 3}}', "not json", "[1, 2]"):
        (tmp_path / pipeline.RUN_SETTINGS).write_text(bad)
        with pytest.raises(checkpoint.CheckpointError, match="sampling.json: not sampler settings per mode") as info:
            pipeline.run_settings(ckpt, "v2a")
        assert "\n" not in str(info.value)
