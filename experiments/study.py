"""CMMD's claims at small scale on the synthetic benchmark (CMMD §3.2, Table 2): nCMMD vs CMMD vs
MM-Diffusion vs a fusion-off ablation, over several seeds, scored against the clips' true event times.

    python experiments/study.py --out runs/study                    # the study
    python experiments/study.py --out /tmp/smoke --smoke            # a handful of steps: guards the script
    python experiments/study.py --out runs/study --parallel         # one process per seed

For every seed it trains, on the same synthetic clips, nCMMD, nCMMD with fusion off and MM-Diffusion at the
same preset name (`--steps` steps each), and from the nCMMD checkpoint `--finetune` more steps at
`--finetune-batch` of nCMMD (the control) and of CMMD at the paper's η = 5e-5 and at a larger η. Each is
scored on held-out clips with demo.evaluate (onset, beat and visual-event F1 and hit rates, mel L1) next to
the ground truth, the truth shifted by 400 ms and another clip's signal. The table (mean ± std over seeds)
goes to OUT/results.md, every number to OUT/results.json; OUT/seedN/scores.json lets a study resume.
What it trains and scores in full, and the runs: docs/study.md.
"""
import argparse
import dataclasses
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data  # noqa: E402
import demo  # noqa: E402
import pipeline  # noqa: E402
import train  # noqa: E402

LARGE_ETA = 5e-3  # the "larger η": 100× the paper's, where the negative terms are visible in the loss


def runs(a) -> list[tuple[str, train.TrainConfig, str | None]]:
    """(name, training config, name of the run to fine-tune from) in training order; the data, output
    folder, seed and parent checkpoint are each seed's (main)."""
    base = train.TrainConfig(preset=a.preset, vae="pixel", size=a.size, lr=a.lr, lr_min=a.lr, ema=0.999,
                             ckpt_every=max(a.steps, a.finetune), preview_every=0, workers=0)
    main = dataclasses.replace(base, batch=a.batch, steps=a.steps)
    more = dataclasses.replace(base, batch=a.finetune_batch, steps=a.finetune)
    every = [("nCMMD", main, None),
             ("nCMMD, fusion off", dataclasses.replace(main, fusion=False), None),
             ("MM-Diffusion", dataclasses.replace(main, model="mmdiffusion"), None),
             ("nCMMD + fine-tune (control)", more, "nCMMD"),
             ("CMMD η=5e-5", dataclasses.replace(more, contrastive=True, eta=train.PAPER_ETA), "nCMMD"),
             (f"CMMD η={LARGE_ETA:g}", dataclasses.replace(more, contrastive=True, eta=LARGE_ETA), "nCMMD")]
    unknown = set(a.skip) - {slug(name) for name, _, _ in every} - {"ncmmd"}
    if unknown or "ncmmd" in a.skip:
        raise SystemExit(f"error: --skip {' '.join(sorted(unknown or {'ncmmd'}))}: not a run that can be skipped "
                         f"(nCMMD is every fine-tune's parent); choose from {[slug(n) for n, _, _ in every[1:]]}")
    return [run for run in every if slug(run[0]) not in a.skip]


def slug(name: str) -> str:
    """Directory and --skip name of a run: "CMMD η=5e-5" -> "cmmd-eta-5e-5"."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower().replace("η", "eta")).strip("-")


def summarise(per_seed: dict) -> tuple[str, dict]:
    """Markdown table of mean ± std over seeds, and the same numbers as a dict."""
    columns = [("v2a", "f1", "v2a onset F1"), ("v2a", "hit", "v2a hit ±100 ms"),
               ("v2a", "beat", "dance beat hit ±100 ms"), ("v2a", "mel_l1", "mel L1 ↓"),
               ("a2v", "f1", "a2v visual F1"), ("a2v", "hit", "a2v visual hit ±100 ms")]
    rows = sorted(dict.fromkeys(name for seed in per_seed.values() for name in seed),  # training order,
                  key=lambda n: n.startswith("reference"))  # then the references
    table = ["| model | " + " | ".join(c[2] for c in columns) + " |", "|---|" + "---|" * len(columns)]
    out = {}
    for name in rows:
        cells = []
        for direction, key, label in columns:
            values = [seed[name][direction][key] for seed in per_seed.values()
                      if name in seed and key in seed[name].get(direction, {})]
            if not values:
                cells.append("–")
                continue
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out.setdefault(name, {})[label] = {"mean": mean, "std": std, "n": len(values)}
            cells.append(f"{mean:.3f} ± {std:.3f}")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(table), out


def parser() -> argparse.ArgumentParser:
    """The study's flags, with their defaults and help."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/study", help="study directory (runs resume from their checkpoints)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="seeds (data order, init, noise); default 0 1 2, or 0 with --smoke")
    p.add_argument("--preset", default="tiny", help="network preset of every model",
                   choices=train.TrainConfig.__dataclass_fields__["preset"].metadata["choices"])
    p.add_argument("--size", type=int, default=16, help="frame side in pixels")
    p.add_argument("--batch", type=int, default=8, help="clips per step")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, constant")
    p.add_argument("--steps", type=int, default=1500, help="training steps of nCMMD, fusion-off and MM-Diffusion")
    p.add_argument("--finetune", type=int, default=500, help="fine-tuning steps of CMMD and of the control")
    p.add_argument("--finetune-batch", type=int, default=2, help="clips per fine-tuning step (the paper's CMMD: 2)")
    p.add_argument("--skip", nargs="+", default=[], metavar="RUN",
                   help="runs to leave out: ncmmd-fusion-off, mm-diffusion, ncmmd-fine-tune-control, "
                        "cmmd-eta-5e-5, cmmd-eta-0.005")
    p.add_argument("--train-clips", type=int, default=1024, help="synthetic training clips")
    p.add_argument("--clips", type=int, default=32, help="held-out clips evaluated per model")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps when sampling")
    for d in ("v2a", "a2v"):
        p.add_argument(f"--guidance-{d}", type=float, default=demo.GUIDANCE[d],
                       help=f"λ of {d} sampling (Eq. 3), the demo's; MM-Diffusion's is scaled to the same weight")
    p.add_argument("--parallel", action="store_true",
                   help="train the seeds in concurrent processes (logs in OUT/seedN.log), then summarise")
    p.add_argument("--smoke", action="store_true", help="a few steps and clips: checks the script runs")
    return p


def train_seeds_in_parallel(a, argv: list[str], out: Path):
    """One child process per seed, on the shards already prepared, so seeds share an idle GPU; exits if any fails."""
    children = []
    for seed in a.seeds:
        args = [x for x in argv if x != "--parallel"] + ["--seeds", str(seed)]
        (out / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        log = open(out / f"seed{seed}.log", "w")
        children.append((seed, subprocess.Popen([sys.executable, __file__, *args], stdout=log, stderr=log)))
    failed = [seed for seed, child in children if child.wait() != 0]
    if failed:
        sys.exit(f"error: study seed(s) {failed} failed; see {out}/seed{failed[0]}.log")


def study_seed(a, seed: int, out: Path, items: list[dict], scores: dict, scores_path: Path):
    """Train (or resume) every run of one seed and score the ones not yet in `scores`, saved after each so an
    interrupted study resumes where it stopped."""
    ckpts = {}
    for name, run_cfg, parent in runs(a):
        run_dir = out / f"seed{seed}" / slug(name)
        cfg = dataclasses.replace(run_cfg, data=str(out / "shards"), out=str(run_dir), seed=seed,
                                  init=str(ckpts[parent]) if parent else None)
        print(f"seed {seed}: {name}", file=sys.stderr)
        ckpts[name] = train.train(cfg, progress=not a.smoke)
        if name in scores:
            continue
        result = demo.evaluate(pipeline.load(ckpts[name]), items, run_dir / "samples",
                               {"sampler": "ddim", "steps": a.sample_steps}, seed, save_first=2,
                               guidance={"v2a": a.guidance_v2a, "a2v": a.guidance_a2v})["scores"]
        scores[name] = {"v2a": result["v2a model"], "a2v": result["a2v model"]}
        for ref in ("ground truth", "shifted 400 ms", "other clip"):  # the reference rows, once per seed
            scores.setdefault(f"reference: {ref}", {"v2a": result[f"v2a {ref}"], "a2v": result[f"a2v {ref}"]})
        scores_path.write_text(json.dumps(scores, indent=1))


def write_results(a, out: Path, per_seed: dict, t0: float):
    """The table to OUT/results.md and stdout, every number to OUT/results.json."""
    table, summary = summarise(per_seed)
    wall = (time.time() - t0) / 60
    (out / "results.json").write_text(json.dumps({"args": vars(a), "per_seed": per_seed, "summary": summary,
                                        "wall_minutes": wall}, indent=1))
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"\n{len(a.seeds)} seeds, {wall:.1f} min wall time; {out / 'results.md'}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parser().parse_args(argv)
    if a.smoke:
        a.steps, a.finetune, a.train_clips, a.clips, a.sample_steps, a.batch, a.finetune_batch = 2, 2, 8, 2, 2, 2, 2
    a.seeds = a.seeds or ([0] if a.smoke else [0, 1, 2])
    runs(a)  # a bad --skip stops here, before any work
    out, t0 = Path(a.out), time.time()
    clip = data.ClipConfig(size=a.size)
    data.prepare("synthetic", out / "shards", clip=clip, num_clips={"train": a.train_clips}, progress=False)
    test = data.SyntheticDataset(clip, "test", num_clips=a.clips)
    items = [test[i] for i in range(len(test))]
    if a.parallel and len(a.seeds) > 1:  # one child per seed, on the shards prepared above
        train_seeds_in_parallel(a, argv, out)
    per_seed = {}
    for seed in a.seeds:
        scores_path = out / f"seed{seed}" / "scores.json"
        scores = per_seed[str(seed)] = json.loads(scores_path.read_text()) if scores_path.exists() else {}
        if not (a.parallel and len(a.seeds) > 1):
            study_seed(a, seed, out, items, scores, scores_path)
    write_results(a, out, per_seed, t0)


if __name__ == "__main__":
    main()
