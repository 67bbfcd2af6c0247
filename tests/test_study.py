"""The study script of experiments/ and the demo, in smoke versions: a handful of steps, to guard against rot."""
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import checkpoint
import data
import demo
import melspec
import models
import pipeline
from conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import backbones  # noqa: E402
import study  # noqa: E402


def test_study_smoke(tmp_path):
    proc = subprocess.run([sys.executable, "experiments/study.py", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    pairs = {(d["a"], d["b"]) for d in results["differences"]}
    assert {("CMMD η=5e-05", "control: nCMMD + K joint steps"), ("CMMD η=5e-05", "nCMMD"),
            ("control: nCMMD + K joint steps", "MM-Diffusion (coupled U-Net, RS-MMA)"),
            ("control: nCMMD + K joint steps", "fusion off")} <= pairs
    assert all(d["verdict"] in ("held", "not held", "inconclusive") for d in results["differences"])
    assert set(results["negative_share"]) == {f"CMMD η={eta:g}" for eta in study.ETAS}
    assert results["cost_ratio"] > 0 and len(results["cost_per_fe"]) == 2
    rows = json.loads((tmp_path / "seed0" / "ncmmd.json").read_text())["rows"]
    assert len(rows["v2a model"]) == 4 and len(rows["a2v other clip"]) == 4
    table = (tmp_path / "results.md").read_text()
    assert "| reference: ground truth | 0.9" in table or "| reference: ground truth | 1.0" in table


def test_backbones_smoke(tmp_path):
    """experiments/backbones.py in a smoke version: every arm trains and is scored on the same clips, the
    conditional-mode checkpoint is scored twice (λ 0 and the demo's λ), and every comparison gets a verdict."""
    proc = subprocess.run([sys.executable, "experiments/backbones.py", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "backbones.json").read_text())
    pairs = {(d["a"], d["b"]) for d in results["differences"]}
    assert pairs == {("DiT", "U-Net (nCMMD)"), ("DiT, equal training wall time", "U-Net (nCMMD)"),
                     ("DiT, trained conditional modes", "DiT"), ("DiT, trained conditional modes + guidance", "DiT")}
    metrics = {d["metric"] for d in results["differences"]}
    assert "v2a onset F1" in metrics and "a2v frame roughness" not in metrics  # roughness: the arm table only
    assert all(len(d["per_seed"]) == 1 for d in results["differences"])
    assert "a2v frame roughness ↓" in (tmp_path / "backbones.md").read_text()
    assert all(d["verdict"] in (f"{d['a']} better", f"{d['b']} better", "within noise")
               for d in results["differences"])
    assert set(results["cost_per_fe"]) == {"U-Net (cpu preset)", "DiT (cpu preset)"}
    seed0 = tmp_path / "seed0"
    assert not (seed0 / "dit-cond-guided").exists()  # scored from dit-cond's checkpoint, not trained again
    meta, _ = checkpoint.read(seed0 / "dit-cond" / "ckpt-00000002.safetensors")
    assert meta["train"]["cond_tasks"] == backbones.COND_TASKS and meta["net"]["cond_modes"]
    scored = {p.stem for p in seed0.glob("*.json")}
    assert scored == {"ncmmd", "dit", "dit-walltime", "dit-cond", "dit-cond-guided"}


@pytest.mark.slow  # 2 min on a 2-core CPU; tests/test_mmldm_runs.py covers its code paths in the default suite
def test_mmldm_smoke(tmp_path):
    """experiments/mmldm.py in a smoke version, its MM-LDM arms alone first (--only, as a second process beside
    backbones.py would run them), then the report with the U-Net and the DiT: every comparison, the
    autoencoder's reconstruction per seed and the sampling time of every arm."""
    def script(*args):
        return subprocess.run([sys.executable, "experiments/mmldm.py", "--smoke", "--out", str(tmp_path), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    bad = script("--only", "nope")
    assert bad.returncode != 0 and "--only nope: no such arm" in bad.stderr
    proc = script("--only", "mmldm", "mmldm-steps")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.stem for p in (tmp_path / "seed0").glob("*.json")} == {"mmldm", "mmldm-steps"}
    proc = script()
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "mmldm.json").read_text())
    assert {(d["a"], d["b"]) for d in results["differences"]} == {
        (m, b) for m in ("MM-LDM, equal training wall time", "MM-LDM, the same steps")
        for b in ("DiT", "U-Net (nCMMD)")}
    assert set(results["reconstruction"]) == {"MM-LDM, equal training wall time", "MM-LDM, the same steps"}
    assert all(0 <= r["v2a"]["f1"] <= 1 for runs in results["reconstruction"].values() for r in runs)
    assert len(results["sampling_seconds"]) == 4 and results["sizes"]["DiT"]["autoencoder"] == 0
    meta, _ = checkpoint.read(tmp_path / "seed0" / "mmldm" / "ckpt-00000002.safetensors")
    assert meta["model"] == "mmldm" and meta["train"]["ae_steps"] == results["ae_steps"]


@pytest.mark.slow  # 2 min on a 2-core CPU; tests/test_text.py covers its code paths in the default suite
def test_captions_smoke(tmp_path):
    """experiments/captions.py in a smoke version: a captioned DiT trains, every arm is scored, the detectors
    find the truth's tempo, pitch and colour, and the comparisons are computed."""
    proc = subprocess.run([sys.executable, "experiments/captions.py", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "seed0" / "text.json").read_text())["rows"]
    truth = rows["ground truth"]
    for metric in ("tempo", "pitch", "colour"):
        assert sum(r.get(f"{metric}_hit", 0) for r in truth) == sum(r.get(f"{metric}_n", 0) for r in truth) > 0
    reported = json.loads((tmp_path / "captions.json").read_text())
    found, sens = reported["differences"], reported["sensitivity"]["0"]
    assert -1 <= sens["cosine"] <= 1 and sens["swap"] >= 0
    assert {d["claim"] for d in found} >= {"synchronisation: two-step against joint (seed 002's claim)",
                                           "adherence: the caption against a shuffled one"}
    meta, _ = checkpoint.read(tmp_path / "seed0" / "run" / "ckpt-00000002.safetensors")
    assert meta["net"]["text"]["encoder"] == "byt5-scratch"


def test_study_reports_a_diverged_arm_without_pairing_it(tmp_path):
    """An arm whose samples came out non-finite on one seed is named in both tables; its comparisons are
    not computed on the remaining seeds, and every other comparison is."""
    a = study.parser().parse_args(["--out", str(tmp_path), "--etas", "5e-5", "0.05", "--bootstrap", "50"])
    a.seeds = [0, 1]
    design = study.design(a)
    rng = np.random.default_rng(0)

    def row() -> dict:
        return {"matched": int(rng.integers(3)), "n_ref": 2, "n_est": 2, "hits": 1, "beats": 0,
                "mel_l1": float(rng.random()), "roughness": float(rng.random())}

    for seed in a.seeds:
        (tmp_path / f"seed{seed}").mkdir()
        for arm in design.arms:
            if not arm.scored:
                continue
            if arm.slug == "cmmd-eta-0.05" and seed == 1:
                record = {"arm": arm.name, "diverged": "non-finite"}
            else:
                record = {"arm": arm.name, "rows": {f"{d} {n}": [row() for _ in range(5)] for d in demo.DIRECTIONS
                                                    for n in ("model", *demo.REFERENCES)}}
            (tmp_path / f"seed{seed}" / f"{arm.slug}.json").write_text(json.dumps(record))
    found = study.differences(a, design, tmp_path)
    lost = [d for d in found if d["a"] == "CMMD η=0.05"]
    assert [d["verdict"] for d in lost] == ["diverged on seed(s) 1"]
    kept = [d for d in found if d["a"] == "CMMD η=5e-05" and d["b"] == "nCMMD"]
    assert {d["metric"] for d in kept} == {m[2] for m in study.COMPARED if m[1] != "beat"}
    assert "| CMMD η=0.05 | diverged on seed(s) 1 |" in study.arm_table(a, design, tmp_path)
    assert "diverged on seed(s) 1 |" in study.difference_table(found)


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


def test_study_never_reuses_scores_made_otherwise(tmp_path):
    """A score file from another checkpoint, clip count or λ in the same --out is an error, not a silent reuse;
    one made the same way is reused; one written before files recorded how they were made is trusted."""
    arm = study.Arm("DiT", "dit", demo.DEMO_TRAIN)
    ckpt, items = tmp_path / "dit" / "ckpt-00001200.safetensors", [None] * 4
    scores = tmp_path / "dit.json"
    assert not study.fresh(scores, ckpt, items, arm)
    scores.write_text(json.dumps({"made": study.made_by(ckpt, items, arm)}))
    assert study.fresh(scores, ckpt, items, arm)
    assert study.fresh(scores, ckpt, items[:2], arm)  # its first clips pair with a run on fewer
    for other, clips in ((tmp_path / "dit" / "ckpt-00000600.safetensors", items), (ckpt, items * 2)):
        with pytest.raises(SystemExit, match="dit.json: scored"):
            study.fresh(scores, other, clips, arm)
    with pytest.raises(SystemExit, match="dit.json: scored"):
        study.fresh(scores, ckpt, items, study.Arm("DiT", "dit", demo.DEMO_TRAIN, guidance=backbones.UNGUIDED))
    scores.write_text(json.dumps({"rows": {}}))
    assert study.fresh(scores, ckpt, items, arm)
