"""The study script of experiments/ and the demo, in smoke versions: a handful of steps, to guard against rot."""
import json
import subprocess
import sys

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
    assert "| v2a model |" in proc.stdout and "model beats the 400 ms-shifted baseline" in proc.stdout
    assert (tmp_path / "samples" / "clip0_v2a.mp4").exists() and (tmp_path / "samples" / "clip0_a2v_mel.png").exists()
