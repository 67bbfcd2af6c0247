"""The study script of experiments/ and the demo, in smoke versions: a handful of steps, to guard against rot."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

import data
import demo
import melspec
import models
import pipeline
from conftest import ROOT


def test_study_smoke(tmp_path):
    proc = subprocess.run([sys.executable, "experiments/study.py", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    names = set(results["per_seed"]["0"])
    assert {"nCMMD", "nCMMD, fusion off", "MM-Diffusion", "nCMMD + fine-tune (control)", "CMMD η=5e-5",
            "reference: ground truth", "reference: shifted 400 ms", "reference: other clip"} <= names
    table = (tmp_path / "results.md").read_text()
    assert "| reference: ground truth | 0.9" in table or "| reference: ground truth | 1.0" in table


@pytest.mark.slow  # two processes training at once: two minutes on a 2-core CPU
def test_study_parallel_smoke(tmp_path):
    """--parallel: one process per seed, each seed's scores in its own file, one table over both."""
    proc = subprocess.run([sys.executable, "experiments/study.py", "--smoke", "--parallel", "--seeds", "3", "4",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["per_seed"]) == {"3", "4"}
    for seed in (3, 4):
        assert "nCMMD" in json.loads((tmp_path / f"seed{seed}" / "scores.json").read_text())
        assert (tmp_path / f"seed{seed}.log").exists()
    assert results["summary"]["nCMMD"]["v2a onset F1"]["n"] == 2


def test_demo_smoke(tmp_path):
    proc = subprocess.run([sys.executable, "demo.py", "--out", str(tmp_path), "--steps", "2", "--train-clips", "8",
                           "--clips", "2", "--sample-steps", "2", "--batch", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| v2a model |" in proc.stdout and "model beats the 400 ms-shifted truth" in proc.stdout
    for name in ("clip0_v2a.mp4", "clip0_a2v.mp4", "clip0_truth.mp4", "clip0_v2a_mel.png", "clip0_frames.png"):
        assert (tmp_path / "samples" / name).exists(), name
    scores = json.loads((tmp_path / "scores-test.json").read_text())
    assert scores["guidance"] == demo.GUIDANCE and scores["step"] == 2 and scores["clips"] == 2
    assert set(scores["margin"]["v2a"]) == {"delta", "lo", "hi"} and (tmp_path / "index.html").exists()
    chosen = json.loads((tmp_path / "model" / "sampling.json").read_text())  # what sample.py on this run uses
    assert {d: s["guidance"] for d, s in chosen.items()} == demo.GUIDANCE and chosen["v2a"]["steps"] == 2
    # --eval-only scores the saved checkpoint on validation clips, with the λ given, and trains nothing more
    ckpts = sorted(tmp_path.glob("model/ckpt-*"))
    proc = subprocess.run([sys.executable, "demo.py", "--out", str(tmp_path), "--eval-only", "--split", "val",
                           "--train-clips", "8", "--clips", "2", "--sample-steps", "2", "--guidance-v2a", "0",
                           "--guidance-a2v", "7"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "scores-val.json").read_text())["guidance"] == {"v2a": 0.0, "a2v": 7.0}
    assert (tmp_path / "samples-val" / "clip0_v2a.mp4").exists() and sorted(tmp_path.glob("model/ckpt-*")) == ckpts


def test_guidance_weights_same_weight_on_the_summed_error():
    """MM-Diffusion's guidance averages the squared error over the condition's elements where CMMD's sums
    it: its λ is scaled by that count, CMMD's is passed through."""
    clip = data.ClipConfig(size=16)
    codecs = {"video": SimpleNamespace(channels=3, factor=1),
              "audio": SimpleNamespace(channels=80, steps=lambda samples: samples // melspec.HOP)}
    lam = {"v2a": 2.0, "a2v": 0.5}
    cmmd, mmd = (pipeline.Pipeline(None, None, codecs, clip, {"sampler": s})
                 for s in ({}, models.MODELS["mmdiffusion"].sampler))
    assert demo.guidance_weights(cmmd, lam) == lam
    assert demo.guidance_weights(mmd, lam) == {"v2a": 2.0 * 18 * 3 * 16 * 16, "a2v": 0.5 * 80 * 112}
