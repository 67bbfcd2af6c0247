"""train.py and sample.py end to end on tiny configs: resume, DDP, sampling a real mp4, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import data
import diffusion
import train
from conftest import FIXTURES, ROOT, shared_file

TINY = ["--preset", "tiny", "--size", "16", "--frames", "6", "--batch", "2", "--num-clips", "8", "--workers", "0",
        "--preview-every", "0", "--log-every", "5"]


def run_train(out, *args):
    cfg = train.parse_args([*TINY, "--out", str(out), *args])
    return train.train(cfg, progress=False)


def test_resume_equals_uninterrupted(tmp_path):
    """20 steps, then a resumed run to 40, equal 40 uninterrupted steps bit for bit (weights, EMA, optimizer)."""
    run_train(tmp_path / "a", "--steps", "20", "--ckpt-every", "20", "--contrastive", "--eta", "0.01")
    resumed = run_train(tmp_path / "a", "--steps", "40", "--ckpt-every", "20", "--contrastive", "--eta", "0.01")
    straight = run_train(tmp_path / "b", "--steps", "40", "--ckpt-every", "40", "--contrastive", "--eta", "0.01")
    assert resumed.name == straight.name == "ckpt-00000040.safetensors"
    a, b = load_file(resumed), load_file(straight)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from uninterrupted ones"
    sa, sb = (torch.load(p.with_suffix(".pt"), weights_only=False) for p in (resumed, straight))
    assert all(torch.equal(x, y) for x, y in zip(sa["opt"]["state"][0].values(), sb["opt"]["state"][0].values()))
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(5, 41, 5))
    assert {"loss", "jdiff", "video", "audio", "neg0", "neg1", "lr"} <= log[-1].keys()


def test_checkpoint_describes_itself(tmp_path):
    ckpt = run_train(tmp_path, "--steps", "2", "--no-fusion")
    model, diff, codecs, clip, meta = train.load_model(ckpt)
    assert meta["net"]["fusion"] is False and clip.frames == 6 and clip.size == 16
    assert meta["mel"] == {"log_min": data.LOG_MEL_MIN, "log_max": data.LOG_MEL_MAX}
    with pytest.raises(train.CheckpointError, match="nope.safetensors: no such checkpoint"):
        train.read_checkpoint(tmp_path / "nope.safetensors")


def test_learning_rate_schedule():
    cfg = train.TrainConfig()
    assert train.learning_rate(cfg, 0) == 1e-4
    assert train.learning_rate(cfg, 80_000) == pytest.approx(8e-5)
    assert train.learning_rate(cfg, 10**7) == 2e-5


def test_nan_guard_names_the_step(tmp_path, monkeypatch):
    real, calls = diffusion.Diffusion.joint_loss, []

    def poisoned(self, *args, **kwargs):  # the loss of step 3 turns NaN
        calls.append(1)
        loss, terms = real(self, *args, **kwargs)
        return (loss * float("nan") if len(calls) == 3 else loss), terms

    monkeypatch.setattr(diffusion.Diffusion, "joint_loss", poisoned)
    with pytest.raises(SystemExit) as stop:
        run_train(tmp_path, "--steps", "5", "--ckpt-every", "2")
    good = tmp_path / "ckpt-00000002.safetensors"
    assert str(stop.value) == f"error: non-finite loss (nan) at step 3; last good checkpoint: {good}"
    assert train.latest_checkpoint(tmp_path) == good
    train.load_model(good)


def test_ddp_two_processes_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                           "train.py", *TINY, "--out", str(tmp_path), "--steps", "3", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in tmp_path.glob("ckpt-*.safetensors")] == ["ckpt-00000003.safetensors"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1  # only rank 0 logs


def test_ddp_time_limit_stops_every_process(tmp_path):
    """Rank 0 alone must not stop: the time limit is agreed across processes, so none is left waiting."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
                           "train.py", *TINY, "--out", str(tmp_path), "--steps", "1000", "--time-limit", "0.0001",
                           "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in tmp_path.glob("ckpt-*.safetensors")] == ["ckpt-00000001.safetensors"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return run_train(tmp_path_factory.mktemp("ckpt"), "--steps", "1")


def sample_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "sample.py", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_sample_v2a_on_a_real_video(tiny_ckpt, tmp_path):
    bunny = shared_file(FIXTURES / "bigbuckbunny.mp4")
    proc = sample_cli("--ckpt", tiny_ckpt, "--v2a", bunny, "--steps", "2", "--frames", "12", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mp4 = tmp_path / "bigbuckbunny_v2a.mp4"
    assert str(mp4) in proc.stdout and (tmp_path / "bigbuckbunny_v2a_mel.png").exists()
    back = data.read_av(mp4, size=16)
    assert back.video.shape[0] == 12 and abs(back.audio.numel() / 16000 - 1.2) < 0.05  # the clip's 1.2 s


def test_sample_a2v_and_joint(tiny_ckpt, tmp_path):
    t = torch.arange(16000) / 16000
    wav = data.write_wav(tmp_path / "tone.wav", 0.5 * torch.sin(2 * torch.pi * 440 * t))
    proc = sample_cli("--ckpt", tiny_ckpt, "--a2v", wav, "--steps", "2", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert data.read_av(tmp_path / "o" / "tone_a2v.mp4", size=16).video.shape[0] == 10  # 1 s at 10 fps
    proc = sample_cli("--ckpt", tiny_ckpt, "--joint", "3", "--batch", "2", "--steps", "2", "--frames", "6",
                      "--out", tmp_path / "j")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "j").glob("joint_*.mp4"))) == 3


def test_sample_bad_input_one_line(tiny_ckpt, tmp_path):
    bikes = shared_file(FIXTURES / "bikes.mp4")
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "empty.wav").write_bytes(b"")
    short = data.write_mp4(tmp_path / "short.mp4", torch.zeros(3, 3, 16, 16, dtype=torch.uint8), torch.zeros(4800))
    vae_like = tmp_path / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(vae_like))
    cases = [
        (["--ckpt", tiny_ckpt, "--v2a", tmp_path / "missing.mp4"], "missing.mp4: no such file"),
        (["--ckpt", tiny_ckpt, "--v2a", tmp_path / "notes.mp4"], "notes.mp4: not a readable media file"),
        (["--ckpt", tiny_ckpt, "--a2v", tmp_path / "empty.wav"], "empty.wav: empty file"),
        (["--ckpt", tiny_ckpt, "--a2v", bikes], "bikes.mp4: no audio stream"),
        (["--ckpt", tiny_ckpt, "--v2a", short], "short.mp4: shorter than one clip"),
        (["--ckpt", tmp_path / "none.safetensors", "--joint", "1"], "none.safetensors: no such checkpoint"),
        (["--ckpt", vae_like, "--joint", "1"], "other.safetensors: not a cmmd checkpoint"),
        (["--ckpt", tmp_path / "notes.mp4", "--joint", "1"], "notes.mp4: not a readable safetensors checkpoint"),
    ]
    wav = data.write_wav(tmp_path / "t.wav", torch.zeros(16000))
    cases.append((["--ckpt", tiny_ckpt, "--v2a", wav], "t.wav: no video stream"))
    for args, message in cases:
        proc = sample_cli(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], (args, proc.stderr[-1500:])
