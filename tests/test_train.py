"""train.py end to end on tiny configs: resume, checkpoints, the NaN guard, DDP."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import checkpoint
import data
import diffusion
import melspec
import pipeline
import train
from conftest import ROOT

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
    pipe = pipeline.load(ckpt)
    meta, clip = pipe.config, pipe.clip
    assert meta["net"]["fusion"] is False and clip.frames == 6 and clip.size == 16
    assert meta["mel"] == {"log_min": melspec.LOG_MEL_MIN, "log_max": melspec.LOG_MEL_MAX}
    with pytest.raises(checkpoint.CheckpointError, match="nope.safetensors: no such cmmd checkpoint"):
        checkpoint.read(tmp_path / "nope.safetensors")


def test_restore_fine_tune_then_resume(tmp_path):
    """restore: a fine-tune (--init) starts the network and its EMA from the parent's raw weights with a fresh
    optimizer; once the run has a checkpoint of its own, it resumes from that instead (raw and EMA weights)."""
    parent = run_train(tmp_path / "parent", "--steps", "2")
    cfg = train.parse_args([*TINY, "--out", str(tmp_path / "child"), "--init", str(parent), "--steps", "1"])
    meta, tensors = checkpoint.read(parent)
    model = pipeline.build(meta).net
    ema = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters())
    with torch.random.fork_rng():  # a resume sets the global RNG state
        assert train.restore(cfg, model, ema, opt, torch.Generator()) == (0, None) and not opt.state
        for module in (model, ema):
            assert all(torch.equal(v, tensors[f"model.{k}"]) for k, v in module.state_dict().items())
        child = train.train(cfg, progress=False)
        assert train.restore(cfg, model, ema, opt, torch.Generator()) == (1, child) and opt.state
        tensors = checkpoint.read(child)[1]
        for module, prefix in ((model, "model."), (ema, "ema.")):
            assert all(torch.equal(v, tensors[prefix + k]) for k, v in module.state_dict().items())


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
    pipeline.load(good)


def test_ddp_two_processes_gloo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29533", "train.py", *TINY, "--out", str(tmp_path), "--steps", "3",
                           "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in tmp_path.glob("ckpt-*.safetensors")] == ["ckpt-00000003.safetensors"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1  # only rank 0 logs
    # the same command again: already trained, every process returns at once (its process group destroyed)
    proc = subprocess.run(proc.args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and proc.stderr.count("already trained to step 3") == 2, proc.stderr[-2000:]


def test_ddp_time_limit_stops_every_process(tmp_path):
    """Rank 0 alone must not stop: the time limit is agreed across processes, so none is left waiting."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29534", "train.py", *TINY, "--out", str(tmp_path), "--steps", "1000",
                           "--time-limit", "0.0001", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in tmp_path.glob("ckpt-*.safetensors")] == ["ckpt-00000001.safetensors"]


def test_centered_run_stores_its_means(tmp_path):
    """--center: the codec means over the training clips are measured once, stored in the checkpoint config,
    and the loaded codecs invert exactly (decode(encode(x)) is the raw codec's round trip)."""
    ckpt = run_train(tmp_path, "--steps", "2", "--center", "--patch", "2")
    pipe = pipeline.load(ckpt)
    center = pipe.config["codec"]["center"]
    assert center.keys() == {"video", "audio"}
    dataset = data.build_dataset("synthetic", "train", pipe.clip, num_clips=8, seed=0)
    raw = {k: c.codec for k, c in pipe.codecs.items()}
    batch = torch.utils.data.default_collate([dataset[i] for i in range(8)])
    z = pipeline.encode_batch(batch, raw, "cpu")
    for k in ("video", "audio"):
        assert center[k] == pytest.approx(z[k].double().mean().item(), abs=1e-6)
        assert pipe.codecs[k].encode is not raw[k].encode
    x = batch["video"].float() / 127.5 - 1
    centered = pipe.codecs["video"].encode(x)
    assert centered.mean().item() == pytest.approx(0, abs=1e-5)
    torch.testing.assert_close(pipe.codecs["video"].decode(centered), raw["video"].decode(raw["video"].encode(x)))
    with pytest.raises(ValueError, match="--no-center"):
        run_train(tmp_path / "mm", "--steps", "1", "--model", "mmdiffusion", "--center")


class Recorded(Exception):
    pass


def test_snr_gamma_reaches_the_loss(tmp_path, monkeypatch):
    """--snr-gamma is the γ the training loss is called with, in train.py and in the demo's run."""
    real, seen = diffusion.Diffusion.joint_loss, []

    def recording(self, *args, **kwargs):
        seen.append(kwargs.get("snr_gamma"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(diffusion.Diffusion, "joint_loss", recording)
    run_train(tmp_path / "run", "--steps", "2", "--snr-gamma", "2.5")
    assert seen == [2.5, 2.5]

    import demo

    def stop(cfg, *args, **kwargs):  # the demo's training config, then stop before any step
        seen.append(cfg.snr_gamma)
        raise Recorded

    monkeypatch.setattr(train, "train", stop)
    for argv, gamma in (([], demo.DEMO_TRAIN.snr_gamma), (["--snr-gamma", "0"], 0.0)):
        with pytest.raises(Recorded):
            demo.run(demo.parse_args(["--out", str(tmp_path / "demo"), "--train-clips", "2", *argv]))
        assert seen[-1] == gamma
    assert demo.DEMO_TRAIN.snr_gamma == 5.0
