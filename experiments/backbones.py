"""The U-Net against a joint audio-video transformer (dit.py, MM-LDM's DiT) at matched size on the synthetic
benchmark, and MM-LDM's trained conditional modes against CMMD's guidance, each a paired difference with a 95 %
interval over seeds and clips.

    python experiments/backbones.py --out runs/study     # after (or before) study.py in the same folder
    python experiments/backbones.py --out /tmp/smoke --smoke

It shares experiments/study.py's folder, clips and machinery: per seed, the U-Net is study.py's nCMMD arm (the
demo's recipe, N steps), its checkpoint and scores reused when they exist. Beside it, with the same recipe, clips,
sampler, λ and sampling noise: the DiT (`cpu` preset) for N steps; the DiT for the steps that take the U-Net's
N steps' training time on one CPU (--walltime-steps, from `python bench.py --backbones`: docs/backbones.md); and
the DiT trained with conditional modes (train.py --cond-tasks), sampled with its trained condition alone (λ 0)
and with the demo's guidance on top. OUT/backbones.md holds the tables, OUT/backbones.json every number.
"""
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study  # noqa: E402

DIT = dict(model="dit", preset="cpu")
COND_TASKS = 0.5  # [choice] half the examples v2a or a2v (a quarter each), half joint: one model does all tasks
# [choice] Equal training wall time is a fixed step count, never a time budget: N × (U-Net step / DiT step), the
# ratio measured side by side at the demo's batch by `python bench.py --backbones` on the 2-core AVX-512 AMD EPYC
# that ran the study (docs/backbones.md); N = 1200 gives 353 DiT steps.
UNET_PER_DIT_STEP = 0.2945
UNGUIDED = {"v2a": 0.0, "a2v": 0.0}  # replacement only (Eq. 5): the trained condition does the conditioning


def design(a) -> study.Design:
    """The arms and comparisons of issue 28; the U-Net arm is study.py's nCMMD (the same slug, so the same run)."""
    base = study.base_config(a)
    dit = dataclasses.replace(base, **DIT)
    steps = a.walltime_steps or round(a.steps * UNET_PER_DIT_STEP)
    walltime = dataclasses.replace(dit, steps=steps, ckpt_every=steps)
    cond = dataclasses.replace(dit, cond_tasks=COND_TASKS)
    unet, joint = "U-Net (nCMMD)", "DiT"
    # the U-Net last: beside a study.py run in the same folder, the study has trained it by the time it is reached
    arms = [study.Arm(joint, "dit", dit), study.Arm("DiT, equal training wall time", "dit-walltime", walltime),
            study.Arm("DiT, trained conditional modes", "dit-cond", cond, guidance=UNGUIDED),
            study.Arm("DiT, trained conditional modes + guidance", "dit-cond-guided", cond, checkpoint_of="dit-cond"),
            study.Arm(unet, "ncmmd", base)]
    comparisons = [("the DiT against the U-Net, the same steps", joint, unet, {}),
                   ("the DiT against the U-Net, the same training wall time", arms[1].name, unet, {}),
                   ("trained conditional modes against guidance", arms[2].name, joint, {}),
                   ("trained conditional modes with guidance against guidance", arms[3].name, joint, {})]
    # roughness is in the arm table beside the truth's, but no comparison's: lower is not better below the truth's
    return study.Design("backbones", arms, comparisons, two_sided=True,
                        headline=("v2a onset F1", "dance beat hit ±100 ms", "a2v visual F1"))


def costs_extra(a, out: Path) -> tuple[list[str], dict]:
    """The step counts, and the cost per function evaluation of the two backbones (Table 3's measure)."""
    cost = study.cost_per_fe({"U-Net (cpu preset)": {}, "DiT (cpu preset)": DIT}, 3 if a.smoke else 30)
    ratio = cost["DiT (cpu preset)"]["ms"] / cost["U-Net (cpu preset)"]["ms"]
    steps = a.walltime_steps or round(a.steps * UNET_PER_DIT_STEP)
    return [f"N = {a.steps} steps at batch {a.batch}; equal wall time: {steps} DiT steps; trained "
            f"conditional modes on {COND_TASKS:g} of the examples.",
            "Cost per function evaluation, batch 1, the demo's shapes: " + "; ".join(
                f"{k}: {v['ms']:.1f} ms, {v['params'] / 1e6:.2f} M parameters" for k, v in cost.items())
            + f"; DiT / U-Net = {ratio:.2f}×. Per training step: `python bench.py --backbones`."], \
        {"cost_per_fe": cost, "cost_ratio": ratio}


def parser():
    p = study.parser()
    p.description = __doc__.split("\n\n")[0]
    p.set_defaults(clips=64)  # [choice] the 64 of study.py's 128 per seed: its first 64, the same noise
    p.add_argument("--walltime-steps", type=int,
                   help="DiT steps whose training time equals the U-Net's N; default N × UNET_PER_DIT_STEP, "
                        "measured by bench.py --backbones (docs/backbones.md)")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    if a.smoke:
        study.smoke(a)
        a.walltime_steps = 1
    a.seeds = a.seeds or ([0] if a.smoke else [0, 1, 2])
    study.run(a, design(a), costs_extra)


if __name__ == "__main__":
    main()
