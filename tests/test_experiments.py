"""experiments/samplers.py and experiments/seams.py in smoke versions, on a 2-step checkpoint: guards
against rot (their real runs are the README's commands)."""
import json
import subprocess
import sys

import pytest
import torch

import data
import demo
import pipeline
import train
from conftest import ROOT


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = train.parse_args(["--preset", "tiny", "--size", "16", "--batch", "2", "--num-clips", "4", "--workers", "0",
                            "--preview-every", "0", "--steps", "2", "--out", str(out)])
    return train.train(cfg, progress=False)


def run(script, *args):
    proc = subprocess.run([sys.executable, f"experiments/{script}", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_samplers_smoke(ckpt, tmp_path):
    stdout = run("samplers.py", "--ckpt", ckpt, "--out", tmp_path, "--smoke")
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 6  # 3 settings (ddim, dpmsolver++, dpmsolver++2s) × {demo λ, λ = 0}
    guided = next(r for r in results.values() if r["guidance"] == "demo λ")
    assert guided["passes"] == {"v2a": 4, "a2v": 4}  # 2 steps, a forward and a backward each
    assert (tmp_path / "samplers.png").stat().st_size > 0 and "DDIM-200" in stdout
    # a rerun resumes: nothing is sampled again
    again = run("samplers.py", "--ckpt", ckpt, "--out", tmp_path, "--smoke")
    rerun = json.loads((tmp_path / "results.json").read_text())
    assert ({k: r["rows"] for k, r in rerun.items()} == {k: r["rows"] for k, r in results.items()}
            and "DDIM-200" in again)
    assert [r["seconds"] for r in rerun.values()] == [r["seconds"] for r in results.values()]


def test_seams_smoke(ckpt, tmp_path):
    stdout = run("seams.py", "--ckpt", ckpt, "--out", tmp_path, "--smoke")
    results = json.loads((tmp_path / "results.json").read_text())
    for d in ("v2a", "a2v"):
        r = results[d]
        assert len(r["windows"]) >= 2 and r["seams_frames"] and len(r["rows_long"]) == 2
        assert set(r["jumps"]) == {"inpainted seams", "hard cuts"}
    assert "| v2a |" in stdout and "| a2v |" in stdout


def test_cheapest_match_needs_every_larger_step_count():
    """A lucky small step count whose larger neighbours do not match never sets the default."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import samplers
    settings = [("ddim", 10), ("ddim", 25), ("ddim", 200), ("dpmsolver++", 10), ("dpmsolver++", 25)]
    upper = {("ddim", 10): 0.01, ("ddim", 25): -0.01, ("ddim", 200): 0.0,  # ddim 10 lucky, 25 does not match
             ("dpmsolver++", 10): -0.02, ("dpmsolver++", 25): 0.03}
    results, deltas = {}, {}
    for g in samplers.guidance_settings():
        for s, n in settings:
            k = samplers.key(g, s, n)
            results[k] = {"passes": {"v2a": n, "a2v": n}}
            deltas[k] = {d: (0.0, -0.1, upper[(s, n)]) for d in ("v2a", "a2v")}
    assert samplers.cheapest_match(results, deltas, settings) == "dpmsolver++ 25"
    deltas[samplers.key("λ = 0", "dpmsolver++", 25)]["a2v"] = (-0.2, -0.3, -0.1)  # fails without guidance
    assert samplers.cheapest_match(results, deltas, settings) == "ddim 200"


def test_a_score_does_not_depend_on_what_ran_before(ckpt, tmp_path):
    """demo.evaluate seeds Griffin-Lim's phases itself: the same clips score the same whatever the global RNG
    held (an --eval-only run, a resumed sweep, a setting run after another)."""
    pipe = pipeline.load(ckpt)
    held_out = data.SyntheticDataset(pipe.clip, "val", num_clips=2, seed=0)
    items = [held_out[i] for i in range(2)]
    rows = []
    for state in (1, 2):
        torch.manual_seed(state)
        torch.rand(100)
        rows.append(demo.evaluate(pipe, items, tmp_path, {"sampler": "ddim", "steps": 2}, save_first=0)["rows"])
    assert rows[0] == rows[1]


def test_dit_audio_patch_smoke(tmp_path):
    """The audio-token choice trains one DiT per --patches value with that value (the parameter counts differ), and
    leaves the cpu preset as it found it."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import dit_audio_patch

    import dit

    before = dict(dit.PRESETS["cpu"])
    dit_audio_patch.main(["--out", str(tmp_path), "--patches", "1", "2", "--steps", "2", "--clips", "2",
                          "--train-clips", "16"])
    rows = json.loads((tmp_path / "audio_patch.json").read_text())["rows"]
    assert set(rows) == {"1", "2"} and rows["1"]["params"] < rows["2"]["params"]
    assert all(r["loss"]["audio"] > 0 for r in rows.values())
    assert "| 2 |" in (tmp_path / "audio_patch.md").read_text()
    assert dit.PRESETS["cpu"] == before
