"""Seams of long generation: sample.py's window-by-window temporal inpainting (sampling.Known; CMMD Eq. 3, 5
along time) on long synthetic clips with known event times.

    python experiments/seams.py                         # the demo's checkpoint, 32 clips of 14.4 s
    python experiments/seams.py --out /tmp/smoke --smoke

For each long clip, video→audio and audio→video are generated three ways with the same sampler, guidance and
seed: long (`generate.generate` in overlapping windows, each given the overlap already generated as known:
what sample.py does), single windows (each generated and scored on its own: the reference for "no loss from
going long") and hard cuts (the single windows laid end to end). Scores: onset F1 at ±100 ms with the paired
bootstrap interval of long − single over clips, and the jump at the seams against the same change inside
windows. Results go to OUT/results.json and OUT/results.md.
How the clips are made and the scores computed: docs/results.md.
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import alignment  # noqa: E402
import checkpoint  # noqa: E402
import cli  # noqa: E402
import data  # noqa: E402
import demo  # noqa: E402
import generate  # noqa: E402
import melspec  # noqa: E402
import pipeline  # noqa: E402
import sampling  # noqa: E402
import synthetic  # noqa: E402
from modalities import to_uint8, to_unit  # noqa: E402

MAX_EVENTS = 256  # room for every event of a long clip (synthetic.EVENTS_MAX is sized for 1.8 s windows)


def long_clips(n: int, frames: int, size: int, seed: int) -> list[dict]:
    clip = data.ClipConfig(frames=frames, size=size, margin=0)
    return [synthetic.synthetic_clip(data._stable_int("seams", seed, i), clip, synthetic.VARIANTS[i % 2],
                                     max_events=MAX_EVENTS) for i in range(n)]


def jumps(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Mean absolute change between neighbours along `axis` (time), averaged over the other non-batch axes:
    (B, ..., T, ...) -> (B, T − 1); entry j is the change from step j to j + 1."""
    d = x.diff(dim=axis).abs().movedim(axis, 1)  # (B, T − 1, ...)
    return d.flatten(2).mean(2)


def seam_stats(series: dict, seams: list[int]) -> dict:
    """Per signal {name: (B, T − 1) jumps}: the mean jump into each seam step s (from s − 1 to s) against the
    mean jump everywhere else, per clip, and their ratio."""
    out = {}
    for name, j in series.items():
        at = torch.zeros(j.shape[1], dtype=torch.bool)
        at[[s - 1 for s in seams]] = True
        seam, inside = j[:, at].mean(1), j[:, ~at].mean(1)  # (B,), (B,)
        out[name] = {"seam": seam.mean().item(), "inside": inside.mean().item(),
                     "ratio": (seam / inside).mean().item(), "per_clip": (seam / inside).tolist()}
    return out


def onset_rows(direction: str, signal, events_per_clip, clip, offsets=None) -> list[dict]:
    """Per clip, onset counts of the generated `signal` against the true events (seconds). offsets: window
    starts (frames) when the signal is a list of windows per clip, scored window by window and pooled."""
    detect = (lambda a: alignment.audio_onsets(a.numpy(), clip.sample_rate)) if direction == "v2a" else \
        (lambda v: alignment.visual_onsets(to_uint8(v), clip.fps))
    rows = []
    for i, ev in enumerate(events_per_clip):
        parts = signal[i] if offsets is not None else [signal[i]]
        starts = offsets if offsets is not None else [0]
        counts = {"hits": 0, "matched": 0, "n_ref": 0, "n_est": 0}
        for part, f0 in zip(parts, starts):
            dur = part.shape[0] / (clip.sample_rate if direction == "v2a" else clip.fps)
            t0 = f0 / clip.fps
            local = ev[(ev >= t0) & (ev < t0 + dur)] - t0
            for k, v in demo.event_scores(local, detect(part)).items():
                counts[k] += v
        rows.append(counts)
    return rows


def run_direction(pipe, cfg, clips: list[dict], direction: str, window: int, overlap: int, seed: int, batch: int):
    clip = data.ClipConfig(frames=clips[0]["video"].shape[0], size=pipe.clip.size, margin=0)
    spf = clip.sample_rate // clip.fps
    known, gen_key = ("video", "audio") if direction == "v2a" else ("audio", "video")
    events = [c["events"][~c["events"].isnan()].double().numpy() for c in clips]
    long, single, spans = [], [], None
    g = torch.Generator(pipe.device).manual_seed(seed)
    cuts = [(f0, min(f0 + window, clip.frames)) for f0 in range(0, clip.frames, window)]
    for lo in range(0, len(clips), batch):
        part = clips[lo:lo + batch]
        cond = {"video": to_unit(torch.stack([c["video"] for c in part])),  # (b, F, 3, H, W)
                "audio": torch.stack([c["audio"] for c in part])}  # (b, L)
        r = generate.generate(pipe, cfg, cond={known: cond[known]}, window=window, overlap=overlap, generator=g)
        spans = r["windows"]
        long += list(r[gen_key].cpu())
        pieces = []
        for f0, f1 in cuts:
            c = ({"video": cond["video"][:, f0:f1]} if known == "video"
                 else {"audio": cond["audio"][:, f0 * spf:f1 * spf]})
            pieces.append(generate.generate(pipe, cfg, cond=c, window=window, overlap=overlap,
                                            generator=g)[gen_key].cpu())
        single += [[p[i] for p in pieces] for i in range(len(part))]
    rows_long = onset_rows(direction, long, events, clip)
    rows_single = onset_rows(direction, single, events, clip, offsets=[f0 for f0, _ in cuts])
    delta = alignment.paired_bootstrap(rows_long, rows_single, seed=seed)
    seams = [spans[i - 1][1] for i in range(1, len(spans))]  # frames where a window's new part begins
    hard = [cuts[i][0] for i in range(1, len(cuts))]
    truth = torch.stack([c[gen_key] for c in clips]).float()
    hard_cat = torch.stack([torch.cat(s) for s in single])
    generated = torch.stack(long)
    if direction == "v2a":  # mel steps: a frame boundary f is mel step f · spf / HOP (whole, block-aligned)
        to_steps = lambda fs: [f * spf // melspec.HOP for f in fs]  # noqa: E731
        series = {k: jumps(melspec.wav_to_mel(x), 2) for k, x in (("generated", generated), ("hard cuts", hard_cat),
                                                                 ("truth", truth))}
    else:
        to_steps = lambda fs: fs  # noqa: E731
        truth = to_unit(truth)
        series = {k: jumps(x, 1) for k, x in (("generated", generated), ("hard cuts", hard_cat), ("truth", truth))}
    seam = {"inpainted seams": seam_stats({k: series[k] for k in ("generated", "truth")}, to_steps(seams)),
            "hard cuts": seam_stats({k: series[k] for k in ("hard cuts", "truth")}, to_steps(hard))}
    return {"f1_long": alignment.pooled_f1(rows_long), "f1_single": alignment.pooled_f1(rows_single),
            "long_minus_single": delta, "windows": spans, "seams_frames": seams, "cuts_frames": hard, "jumps": seam,
            "rows_long": rows_long, "rows_single": rows_single}


def parse_args(argv=None):
    p = cli.experiment_parser(__doc__, "runs/seams", 32, "long clips")
    p.add_argument("--seconds", type=float, default=14.4, help="length of each clip")
    p.add_argument("--window", type=int, default=generate.DEFAULT_WINDOW, help="frames per window")
    p.add_argument("--overlap", type=int, default=generate.DEFAULT_OVERLAP, help="frames shared with the window before")
    p.add_argument("--sampler", default=demo.SAMPLER["sampler"], choices=list(sampling.SOLVERS))
    p.add_argument("--steps", type=int, default=demo.SAMPLER["steps"])
    p.add_argument("--batch", type=int, default=16, help="clips sampled together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="2 clips of 4.8 s, 2 steps")
    return p.parse_args(argv)


def run(a):
    ckpt, _ = checkpoint.resolve(a.ckpt)  # a file, or a run folder's newest
    out = Path(a.out)
    cli.check_writable_dir(out)
    if a.smoke:
        a.clips, a.seconds, a.steps = 2, 4.8, 2
    pipe = pipeline.load(ckpt)
    clips = long_clips(a.clips, round(a.seconds * pipe.clip.fps), pipe.clip.size, a.seed)
    results = {"checkpoint": str(ckpt), "clips": a.clips, "seconds": a.seconds, "window": a.window,
               "overlap": a.overlap, "sampler": a.sampler, "steps": a.steps, "guidance": demo.GUIDANCE}
    lam = demo.guidance_weights(pipe, demo.GUIDANCE)
    lines = [f"{a.clips} long synthetic clips of {a.seconds:g} s, {ckpt}, {a.sampler} {a.steps} steps, "
             f"window {a.window} frames, overlap {a.overlap}", "",
             "| direction | F1 long | F1 single windows | long − single [95 % CI] | seam jump / inside jump: "
             "generated | truth at the seams | hard cuts | truth at the cuts |", "|---|---|---|---|---|---|---|---|"]
    for d in demo.DIRECTIONS:
        cfg = pipe.sampler(sampler=a.sampler, steps=a.steps, guidance=lam[d])
        r = run_direction(pipe, cfg, clips, d, a.window, a.overlap, a.seed, a.batch)
        results[d] = r
        j = r["jumps"]
        dl = r["long_minus_single"]
        lines.append(f"| {d} | {r['f1_long']:.3f} | {r['f1_single']:.3f} | {dl[0]:+.3f} [{dl[1]:+.3f}, {dl[2]:+.3f}] | "
                     f"{j['inpainted seams']['generated']['ratio']:.2f} | "
                     f"{j['inpainted seams']['truth']['ratio']:.2f} | "
                     f"{j['hard cuts']['hard cuts']['ratio']:.2f} | {j['hard cuts']['truth']['ratio']:.2f} |")
        checkpoint.write_text(out / "results.json", json.dumps(results, indent=1))
    md = "\n".join(lines)
    checkpoint.write_text(out / "results.md", md + "\n")
    print(md)


if __name__ == "__main__":
    cli.run(run, parse_args())
