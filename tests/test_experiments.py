"""experiments/samplers.py and experiments/seams.py in smoke versions, on a 2-step checkpoint: guards
against rot (their real runs are the README's commands)."""
import json
import subprocess
import sys

import pytest

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
    assert len(results) == 4  # 2 settings × {demo λ, λ = 0}
    guided = next(r for r in results.values() if r["guidance"] == "demo λ")
    assert guided["passes"] == {"v2a": 4, "a2v": 4}  # 2 steps, a forward and a backward each
    assert (tmp_path / "samplers.png").stat().st_size > 0 and "DDIM-200" in stdout
    # a rerun resumes: nothing is sampled again
    again = run("samplers.py", "--ckpt", ckpt, "--out", tmp_path, "--smoke")
    rerun = json.loads((tmp_path / "results.json").read_text())
    assert {k: r["rows"] for k, r in rerun.items()} == {k: r["rows"] for k, r in results.items()} and "DDIM-200" in again
    assert [r["seconds"] for r in rerun.values()] == [r["seconds"] for r in results.values()]


def test_seams_smoke(ckpt, tmp_path):
    stdout = run("seams.py", "--ckpt", ckpt, "--out", tmp_path, "--smoke")
    results = json.loads((tmp_path / "results.json").read_text())
    for d in ("v2a", "a2v"):
        r = results[d]
        assert len(r["windows"]) >= 2 and r["seams_frames"] and len(r["rows_long"]) == 2
        assert set(r["jumps"]) == {"inpainted seams", "hard cuts"}
    assert "| v2a |" in stdout and "| a2v |" in stdout
