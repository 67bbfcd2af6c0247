"""The paper's claims on the synthetic benchmark (CMMD §2.2, §3.2–3.4, Tables 2–3), each a paired difference
with a 95 % interval over seeds and clips, the smallest effect the study could see, and a verdict.

    python experiments/study.py --out runs/study                 # the study: docs/study.md
    python experiments/study.py --out runs/study --seeds 3 4 5   # other seeds; resumes what exists
    python experiments/study.py --out /tmp/smoke --smoke         # a few steps and clips: what CI runs

Per seed, on that seed's synthetic clips, with the demo's recipe (demo.DEMO_TRAIN): nCMMD for --steps N; from
it --finetune K steps at --finetune-batch of the joint loss (the control) and of CMMD's Eq. 6 at each --eta;
fusion off and MM-Diffusion's coupled U-Net at CMMD's size on CMMD's representations (train.py --as-cmmd), each
N + K steps the same way. Every scored arm samples that seed's held-out test clips with the demo's sampler and λ
and the same noise; each clip's scores are kept (OUT/seedS/ARM.json), so an interrupted study resumes and any
pairing can be recomputed. OUT/results.md holds the tables, OUT/results.json every number.
"""
import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import alignment  # noqa: E402
import bench  # noqa: E402
import data  # noqa: E402
import demo  # noqa: E402
import media  # noqa: E402
import pipeline  # noqa: E402
import train  # noqa: E402

# the paper's η (CMMD §2.2) and three larger, up to one where Eq. 6's unbounded negative term diverges
ETAS = (train.PAPER_ETA, 1e-3, 5e-3, 5e-2)
FINETUNE_LR = (1e-3, 1e-4)  # [choice] a cosine from 1e-3 to the demo's final 1e-4 over K steps: docs/study.md
METRICS = [("v2a", "f1", "v2a onset F1", 1), ("v2a", "hit", "v2a hit ±100 ms", 1),
           ("v2a", "beat", "dance beat hit ±100 ms", 1), ("v2a", "mel_l1", "mel L1", -1),
           ("a2v", "f1", "a2v visual F1", 1), ("a2v", "hit", "a2v hit ±100 ms", 1),
           ("a2v", "roughness", "a2v frame roughness", -1)]  # (direction, key, label, +1 higher is better)
MMD = dict(model="mmdiffusion", preset="cpu", as_cmmd=True)  # MM-Diffusion's network at CMMD's size (--as-cmmd)
COMPARED = [m for m in METRICS if m[1] != "roughness"]  # roughness describes an arm; it is no claim's measure


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str  # as in the tables
    slug: str  # its folder, OUT/seedS/SLUG
    cfg: train.TrainConfig
    parent: str | None = None  # the slug of the run it continues
    scored: bool = True
    guidance: dict | None = None  # λ per direction when sampled; None: the demo's (demo.GUIDANCE)
    checkpoint_of: str | None = None  # score that arm's checkpoint (with other sampling) instead of training


@dataclasses.dataclass(frozen=True)
class Design:
    """What one study trains, scores and compares: study.py's claims, or experiments/backbones.py's."""
    name: str  # OUT/NAME.md and OUT/NAME.json hold its report
    arms: list[Arm]
    comparisons: list[tuple[str, str, str, dict]]  # (claim, arm A, arm B, the paper's A − B per metric label)
    metrics: list = dataclasses.field(default_factory=lambda: METRICS)  # the arm table's columns
    compared: list = dataclasses.field(default_factory=lambda: COMPARED)  # the metrics of every comparison
    two_sided: bool = False  # no claimed direction: the verdict names the better arm, not a claim held
    headline: tuple = ("dance beat hit ±100 ms", "v2a onset F1", "a2v visual F1")  # the README's table: Table 2's

    def slug(self, arm: str) -> str | None:
        """The file name of an arm's scores (a reference's rows are in every arm's file: the first's)."""
        found = {x.name: x.slug for x in self.arms}
        return found.get(arm, self.arms[0].slug if arm.startswith("reference: ") else None)


def arms(a) -> list[Arm]:
    """Every run of a seed, in training order (a parent before its fine-tunes)."""
    base = base_config(a)
    more = dataclasses.replace(base, steps=a.finetune, batch=a.finetune_batch, lr=FINETUNE_LR[0],
                               lr_min=FINETUNE_LR[1], warmup=0, ckpt_every=a.finetune)
    out = [Arm("nCMMD", "ncmmd", base),
           Arm("control: nCMMD + K joint steps", "control", more, "ncmmd")]
    out += [Arm(f"CMMD η={eta:g}", f"cmmd-eta-{eta:g}", dataclasses.replace(more, contrastive=True, eta=eta), "ncmmd")
            for eta in a.etas]
    out += [Arm("fusion off, N steps", "fusion-off-base", dataclasses.replace(base, fusion=False), scored=False),
            Arm("fusion off", "fusion-off", dataclasses.replace(more, fusion=False), "fusion-off-base"),
            Arm("MM-Diffusion, N steps", "mmdiffusion-base", dataclasses.replace(base, **MMD), scored=False),
            Arm("MM-Diffusion (coupled U-Net, RS-MMA)", "mmdiffusion", dataclasses.replace(more, **MMD),
                "mmdiffusion-base")]
    return out


def base_config(a) -> train.TrainConfig:
    """The first N steps of every arm: the demo's recipe at the study's steps, batch and clips."""
    return dataclasses.replace(demo.DEMO_TRAIN, steps=a.steps, batch=a.batch, num_clips=a.train_clips,
                               ckpt_every=a.steps, log_every=10)


def design(a) -> Design:
    """The paper's claims (issue 27)."""
    return Design("results", arms(a), comparisons(a))


def comparisons(a) -> list[tuple[str, str, str, dict]]:
    """(claim, arm A, arm B, the paper's A − B per metric label) of every paired difference reported."""
    claim1 = {"dance beat hit ±100 ms": 0.01}  # Table 2: CMMD 45 % against nCMMD 44 %
    out = [("1. contrastive training improves alignment", f"CMMD η={eta:g}", "control: nCMMD + K joint steps", claim1)
           for eta in a.etas]
    out += [("1. (as the paper's Table 2: against nCMMD)", f"CMMD η={a.etas[0]:g}", "nCMMD", claim1),
            ("2. easy fusion beats MM-Diffusion's coupled U-Net", "control: nCMMD + K joint steps",
             "MM-Diffusion (coupled U-Net, RS-MMA)", {"dance beat hit ±100 ms": 0.03}),  # Table 2: nCMMD 44 %, MMD 41 %
            ("3. the condition reaches the generated stream through fusion", "control: nCMMD + K joint steps",
             "fusion off", {})]
    return out


def parser() -> argparse.ArgumentParser:
    """The study's flags, with their defaults and help."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/study", help="study folder (under the ignored runs/); resumes")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of clips, init, order and noise; default 0 1 2")
    p.add_argument("--steps", type=int, default=demo.DEMO_TRAIN.steps, help="N: nCMMD's steps (the demo's)")
    p.add_argument("--batch", type=int, default=demo.DEMO_TRAIN.batch, help="clips per step of the first N steps")
    p.add_argument("--finetune", type=int, default=600, help="K: fine-tune steps of every continued arm (≥ N/2)")
    p.add_argument("--finetune-batch", type=int, default=2, help="clips per fine-tune step (the paper's CMMD: 2)")
    p.add_argument("--etas", type=float, nargs="+", default=list(ETAS), help="η of the CMMD arms (Eq. 6)")
    p.add_argument("--train-clips", type=int, default=512, help="synthetic training clips per seed (the demo's)")
    p.add_argument("--clips", type=int, default=128, help="held-out test clips per seed")
    p.add_argument("--bootstrap", type=int, default=4000, help="bootstrap resamples per difference")
    p.add_argument("--only", nargs="+", metavar="SLUG", help="train and score only these arms (OUT/seedS/SLUG), "
                   "no report: shares a design's work between processes; a run without it reports")
    p.add_argument("--smoke", action="store_true", help="a few steps and clips: checks the script runs")
    return p


def run_seed(a, d: Design, seed: int, out: Path) -> None:
    """Train (or resume) every arm of one seed and score each scored arm not yet scored, one file per arm."""
    clip = data.ClipConfig(size=demo.DEMO_TRAIN.size)
    shards = out / f"seed{seed}" / "shards"
    data.prepare("synthetic", shards, clip=clip, seed=seed, num_clips={"train": a.train_clips}, progress=False)
    test = data.SyntheticDataset(clip, "test", num_clips=a.clips, seed=seed)
    items = [test[i] for i in range(len(test))]
    ckpts = {}
    for arm in d.arms:
        needed = any(x.slug in a.only and arm.slug in (x.parent, x.checkpoint_of) for x in d.arms) if a.only else True
        if a.only and arm.slug not in a.only and not needed:
            continue  # --only: another process's arm
        run_dir = out / f"seed{seed}" / (arm.checkpoint_of or arm.slug)
        scores = out / f"seed{seed}" / f"{arm.slug}.json"
        if arm.checkpoint_of or (arm.parent and ckpts[arm.parent] is None):
            ckpts[arm.slug] = ckpts[arm.checkpoint_of or arm.parent]
        else:
            cfg = dataclasses.replace(arm.cfg, data=str(shards), out=str(run_dir), seed=seed,
                                      init=str(ckpts[arm.parent]) if arm.parent else None)
            print(f"seed {seed}: {arm.name}", file=sys.stderr)
            ckpts[arm.slug] = trained(cfg, not a.smoke)
        if ckpts[arm.slug] is None:  # a non-finite training loss here or in the run it continues
            scores.write_text(json.dumps({"arm": arm.name, "diverged": "non-finite training loss"}))
        elif arm.scored and (not a.only or arm.slug in a.only) and not fresh(scores, ckpts[arm.slug], items, arm):
            score(ckpts[arm.slug], arm, items, seed, run_dir / f"samples-{arm.slug}", scores)


def trained(cfg: train.TrainConfig, progress: bool) -> Path | None:
    """train.train's checkpoint at exactly cfg.steps; None if the loss went non-finite (Eq. 6 is unbounded
    below: a large η can diverge, and that is a result). A run already past cfg.steps is an error: its folder
    belongs to another design."""
    try:
        ckpt = train.train(cfg, progress=progress)
    except SystemExit as e:
        if "non-finite" not in str(e):
            raise
        return None
    if ckpt is None or ckpt.name != f"ckpt-{cfg.steps:08d}.safetensors":
        raise SystemExit(f"error: {cfg.out}: its newest checkpoint is {ckpt and ckpt.name}, not step {cfg.steps}: "
                         "that run was made with other settings; use another --out")
    return ckpt


def made_by(ckpt: Path, items: list, arm: Arm) -> dict:
    """What a score file depends on: the checkpoint (run folder and step), the clips, λ."""
    return {"checkpoint": f"{ckpt.parent.name}/{ckpt.name}", "clips": len(items),
            "guidance": arm.guidance or demo.GUIDANCE}


def fresh(scores: Path, ckpt: Path, items: list, arm: Arm) -> bool:
    """Whether an arm's score file exists and was made from this checkpoint, on as many clips and with this λ;
    one made otherwise is an error (an earlier design in the same --out), never silently reused."""
    if not scores.exists():
        return False
    record = json.loads(scores.read_text())
    made = record.get("made", {})  # absent: written before score files recorded how they were made
    now = made_by(ckpt, items, arm)
    if made and {**made, "clips": now["clips"]} == now and made["clips"] >= now["clips"]:
        return True  # more clips than asked: load_rows pairs the first ones, which had the same noise
    if made and made != now:
        raise SystemExit(f"error: {scores}: scored {made}, but this run asks for {now}; use another --out")
    return True


def score(ckpt: Path, arm: Arm, items: list, seed: int, samples: Path, scores: Path) -> None:
    """An arm's per-clip scores on the test clips (demo.evaluate, the demo's sampler), or that it diverged, with
    how they were made."""
    made = made_by(ckpt, items, arm)
    try:
        result = demo.evaluate(pipeline.load(ckpt), items, samples, {k: demo.SAMPLER[k] for k in ("sampler", "steps")},
                               seed, save_first=2, guidance=made["guidance"])
    except media.BadInput as e:  # non-finite samples: a diverged model
        print(f"seed {seed}: {arm.name} diverged: {e}", file=sys.stderr)
        scores.write_text(json.dumps({"arm": arm.name, "diverged": str(e), "made": made}))
        return
    scores.write_text(json.dumps({"arm": arm.name, "made": made, "rows": result["rows"], "scores": result["scores"]},
                                 default=float))


def diverged(a, d: Design, out: Path, arm: str) -> list[int]:
    """The seeds on which an arm's samples came out non-finite (its score file says so)."""
    slug = d.slug(arm)
    return [s for s in a.seeds if slug and "diverged" in json.loads((out / f"seed{s}" / f"{slug}.json").read_text())]


def negative_share(run_dir: Path, eta: float) -> float:
    """η·L¬ / L_jdiff averaged over a fine-tune's log lines: how much Eq. 6's negative terms weigh."""
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    ratios = [eta * sum(v for k, v in x.items() if k.startswith("neg")) / x["jdiff"] for x in lines]
    return sum(ratios) / len(ratios)


def cost_per_fe(settings: dict[str, dict], reps: int) -> dict:
    """Milliseconds per function evaluation (Table 3's measure) of networks built as train.py builds them (each
    setting a change to demo.DEMO_TRAIN) at batch 1 on the demo's shapes, interleaved in this process (median
    of `reps` in three rounds; bench.py), and their parameter counts."""
    runs = bench.demo_runs(settings, torch.device("cpu"))
    times = bench.interleaved(bench.fe_calls(runs), warmup=2, runs=max(1, reps // 3))
    return {name: {"ms": 1000 * statistics.median(t), "params": sum(p.numel() for p in runs[name][1].parameters())}
            for name, t in times.items()}


def load_rows(a, d: Design, out: Path, arm: str, direction: str) -> list[list[dict]]:
    """Per seed, the per-clip scores of an arm ("model") or a reference ("reference: other clip")."""
    name = "model" if not arm.startswith("reference: ") else arm.removeprefix("reference: ")
    # the first --clips clips: a file scored on more (study.py's 128 beside backbones.py's 64) drew the same
    # noise for them, as demo.evaluate samples clip batches in order from one generator
    return [json.loads((out / f"seed{s}" / f"{d.slug(arm)}.json").read_text())["rows"][f"{direction} {name}"][:a.clips]
            for s in a.seeds]


def differences(a, d: Design, out: Path) -> list[dict]:
    """Every comparison's paired differences, oriented so that positive means A is better, with the interval,
    the 80 %-power minimum detectable effect and the verdict against the paper's figure."""
    found = []
    for claim, arm_a, arm_b, paper in d.comparisons:
        lost = sorted(set(diverged(a, d, out, arm_a) + diverged(a, d, out, arm_b)))
        if lost:  # nothing to pair on those seeds: say so rather than drop seeds and change the design
            found.append({"claim": claim, "a": arm_a, "b": arm_b, "metric": "all", "paper": None,
                          "verdict": f"diverged on seed(s) {', '.join(map(str, lost))}"})
            continue
        for direction, key, label, sign in d.compared:
            ra, rb = load_rows(a, d, out, arm_a, direction), load_rows(a, d, out, arm_b, direction)
            if key == "beat" and not any(r.get("beats") for rows in ra for r in rows):
                continue  # no dance clip with a beat among the test clips (a smoke run)
            first, second = (ra, rb) if sign > 0 else (rb, ra)  # A's gain over B
            ci = alignment.seed_clip_bootstrap(first, second, key, n=a.bootstrap, seed=0)
            ci["per_seed"] = [pooled_ratio(x, key) - pooled_ratio(y, key) for x, y in zip(first, second)]
            verdict = (alignment.verdict(ci["lo"], ci["hi"], paper.get(label)) if not d.two_sided else
                       f"{arm_a} better" if ci["lo"] > 0 else f"{arm_b} better" if ci["hi"] < 0 else "within noise")
            found.append({"claim": claim, "a": arm_a, "b": arm_b, "metric": label, "paper": paper.get(label), **ci,
                          "verdict": verdict})
    return found


def pooled_ratio(rows: list[dict], key: str) -> float:
    """A metric over one seed's clips as demo.pooled computes it: summed numerators over summed denominators."""
    num, den = alignment.RATIOS[key]
    total = sum(den(r) for r in rows)
    return sum(num(r) for r in rows) / total if total else float("nan")


def arm_table(a, d: Design, out: Path) -> str:
    """Each scored arm's and each reference's scores pooled over seeds and clips (markdown)."""
    names = [x.name for x in d.arms if x.scored] + [f"reference: {r}" for r in demo.REFERENCES]
    lines = ["| arm | " + " | ".join(m[2] + (" ↓" if m[3] < 0 else "") for m in d.metrics) + " |",
             "|---|" + "---|" * len(d.metrics)]
    for name in names:
        if lost := diverged(a, d, out, name):
            lines.append(f"| {name} | diverged on seed(s) {', '.join(map(str, lost))} |" + " |" * (len(d.metrics) - 1))
            continue
        pooled = {k: demo.pooled([r for rows in load_rows(a, d, out, name, k) for r in rows]) for k in demo.DIRECTIONS}
        cells = [pooled[direction].get(key) for direction, key, _, _ in d.metrics]
        lines.append(f"| {name} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines)


def difference_table(found: list[dict], metrics=None) -> str:
    """The paired differences (markdown), a row per claim, arms and metric (only `metrics`' labels if given)."""
    lines = ["| claim | A | B | metric | paper A − B | ours: A's gain [95 % CI] | per seed | MDE 80 % | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in found:
        if metrics and d["metric"] not in metrics and "delta" in d:
            continue
        paper = "–" if d["paper"] is None else f"{d['paper']:+.2f}"
        if "delta" not in d:
            lines.append(f"| {d['claim']} | {d['a']} | {d['b']} | {d['metric']} | {paper} | – | – | – | "
                         f"{d['verdict']} |")
            continue
        lines.append(f"| {d['claim']} | {d['a']} | {d['b']} | {d['metric']} | {paper} | "
                     f"{d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] | "
                     + ", ".join(f"{x:+.3f}" for x in d["per_seed"]) + f" | {d['mde']:.3f} | {d['verdict']} |")
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU's model name as lscpu gives it, and the threads torch uses."""
    try:
        names = [x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                 if x.startswith("model name")]
    except OSError:
        names = [platform.processor()]
    return f"{names[0] if names else platform.machine()}, {torch.get_num_threads()} threads"


def report(a, d: Design, out: Path, wall: dict, extra=None) -> dict:
    """OUT/NAME.md (the arms, the paired differences, and what `extra(a, out)` adds: (paragraphs, numbers))
    and OUT/NAME.json (every number)."""
    found = differences(a, d, out)
    paragraphs, numbers = extra(a, out) if extra else ([], {})
    text = "\n\n".join([f"Seeds {a.seeds}, {a.clips} test clips each; {cpu_name()}; {sum(wall.values()):.1f} min of "
                         "training and sampling.", "The headline metrics:", difference_table(found, d.headline),
                         "Every arm, pooled over seeds and clips:", arm_table(a, d, out),
                         "Every paired difference:", difference_table(found), *paragraphs])
    results = {"args": vars(a), "differences": found, **numbers, "cpu": cpu_name(), "wall_minutes": wall}
    (out / f"{d.name}.json").write_text(json.dumps(results, indent=1))
    (out / f"{d.name}.md").write_text(text + "\n")
    print(text)
    return results


def claims_extra(a, out: Path) -> tuple[list[str], dict]:
    """The claims study's own paragraphs: its N and K, η·L¬/L_jdiff per fine-tune, and Table 3's cost per FE."""
    shares = {f"CMMD η={eta:g}": [negative_share(out / f"seed{s}" / f"cmmd-eta-{eta:g}", eta) for s in a.seeds]
              for eta in a.etas}
    cost = cost_per_fe({"CMMD (easy fusion)": {}, "MM-Diffusion (coupled U-Net, RS-MMA)": MMD}, 3 if a.smoke else 30)
    ratio = cost["MM-Diffusion (coupled U-Net, RS-MMA)"]["ms"] / cost["CMMD (easy fusion)"]["ms"]
    return [f"N = {a.steps} steps at batch {a.batch}; K = {a.finetune} at batch {a.finetune_batch}.",
            "η·L¬ / L_jdiff over each fine-tune, per seed: " + "; ".join(
                f"{k}: " + ", ".join(f"{v:.2e}" for v in vs) for k, vs in shares.items()),
            "Cost per function evaluation, batch 1, the demo's shapes: " + "; ".join(
                f"{k}: {v['ms']:.1f} ms, {v['params'] / 1e6:.2f} M parameters" for k, v in cost.items())
            + f"; MM-Diffusion / CMMD = {ratio:.2f}× (paper, Table 3: 721 / 136 ms = 5.3×)"], \
        {"negative_share": shares, "cost_per_fe": cost, "cost_ratio": ratio}


def run(a, d: Design, extra=None) -> dict:
    """Every seed of a design (each resuming what exists), then its report; wall minutes per seed accumulate
    over resumed runs in OUT/NAME-wall.json."""
    unknown = set(getattr(a, "only", None) or ()) - {x.slug for x in d.arms}
    if unknown:
        raise SystemExit(f"error: --only {' '.join(sorted(unknown))}: no such arm; the arms are "
                         + ", ".join(x.slug for x in d.arms))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wall_file = out / f"{d.name}-wall.json"
    wall = json.loads(wall_file.read_text()) if wall_file.exists() else {}
    for seed in a.seeds:
        t0 = time.time()
        run_seed(a, d, seed, out)
        wall[str(seed)] = wall.get(str(seed), 0.0) + (time.time() - t0) / 60
        wall_file.write_text(json.dumps(wall))
    if a.only:
        print(f"scored {', '.join(a.only)}; run without --only for the report", file=sys.stderr)
        return {}
    return report(a, d, out, {s: wall[str(s)] for s in map(str, a.seeds)}, extra)


def smoke(a) -> None:
    """--smoke: a few steps and clips, seed 0."""
    a.steps, a.finetune, a.batch, a.finetune_batch, a.train_clips, a.clips, a.bootstrap = 2, 2, 2, 2, 8, 4, 200


def main(argv=None):
    a = parser().parse_args(argv)
    if a.smoke:
        smoke(a)
    a.seeds = a.seeds or ([0] if a.smoke else [0, 1, 2])
    if 2 * a.finetune < a.steps and not a.smoke:
        raise SystemExit(f"error: --finetune {a.finetune}: K must be at least half of N = {a.steps} (the paper: "
                         f"300 k after 400 k)")
    run(a, design(a), claims_extra)


if __name__ == "__main__":
    main()
