"""Speed of one function evaluation: CMMD vs MM-Diffusion (CMMD Table 3, "Performance"; App. B).

Times one forward pass at batch 1 under torch.inference_mode of CMMD's paper preset at 16×16 and 64×64
SD-VAE latents, MM-Diffusion at its official configuration and, when ../shared/reference/mm-diffusion and
einops are there, the official code's MultimodalUNet; reports parameters, GFLOP (torch's FlopCounterMode on a
meta-device copy), ms per evaluation (median/min/max after warm-up) and the ratio MM-Diffusion / CMMD next to
the paper's. Absolute times mean something only on a GPU; on a CPU only the ratios do, the CPU time is reported
too, and --quick runs on one thread (intra-op threads of an oversubscribed CPU mostly wait on each other).
Modes: fp32 on CPU; fp32 (true fp32 unless --tf32) and bf16 autocast on CUDA; --compile adds compiled runs.

    python bench.py --quick                      # CPU, one thread
    python bench.py --device cuda --compile --json bench.json
    python bench.py --demo-step                  # the demo's training step, old network against new
    python bench.py --backbones                  # U-Net against DiT at the cpu presets: per FE and per step
What it measures in full, and every measurement: docs/speed.md.
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import mmdiffusion
import mmunet
import models

PAPER_MS = {"CMMD 16×16": 136.0, "CMMD 64×64": 299.0, "MM-Diffusion": 721.0}  # CMMD Table 3, RTX Titan, batch 1
CMMD_FRAMES, MEL_BINS, MEL_STEPS = 18, 80, 112  # a training clip (CMMD §3 "Feature Extraction", data.ClipConfig)
LATENT_CHANNELS = 4  # SD-VAE latents (CMMD §3, App. B; vae.py)
STEP_N = 500  # the diffusion step fed to the networks; the cost does not depend on it
QUICK = dict(warmup=1, runs=3, budget=60.0)  # --quick: at most `budget` s of timed runs per model on a CPU
QUICK_STEPS = 5  # sampler steps actually run per setting with --quick on a CPU (the rest extrapolated)
SAMPLER_STEPS = (10, 15, 25, 50, 100, 200)  # the step counts of the sampler table (experiments/samplers.py's)
FULL = {"cuda": dict(warmup=5, runs=20, budget=0.0), "cpu": dict(warmup=1, runs=5, budget=0.0)}
# The official MM-Diffusion code, a test reference outside the repository (see its SOURCE.txt).
SHARED = Path(os.environ.get("CMMD_SHARED", Path(__file__).resolve().parent.parent / "shared"))
OFFICIAL_CODE = SHARED / "reference" / "mm-diffusion"
OFFICIAL_NAME = "MM-Diffusion (official code)"


@dataclass
class Network:
    """One benchmarked network: how to build it and the input shapes of one function evaluation."""
    name: str
    build: Callable[[], torch.nn.Module]
    shapes: dict


class OfficialForward(torch.nn.Module):
    """The official MultimodalUNet behind our call convention: model({"video", "audio"}, n) -> dict."""

    def __init__(self, cfg: mmunet.MMDiffusionConfig):
        super().__init__()
        import sys
        sys.path.insert(0, str(OFFICIAL_CODE))
        from mm_diffusion.multimodal_unet import MultimodalUNet
        self.net = MultimodalUNet(**mmdiffusion.official_kwargs(cfg))

    def forward(self, x: dict, n: torch.Tensor) -> dict:
        video, audio = self.net(x["video"], x["audio"], n)
        return {"video": video, "audio": audio}


def official_available() -> bool:
    import importlib.util
    code = OFFICIAL_CODE / "mm_diffusion" / "multimodal_unet.py"
    return code.is_file() and importlib.util.find_spec("einops") is not None


def networks() -> list[Network]:
    """The networks of CMMD's Table 3 at their full size, built through the model registry (models.py)."""
    cmmd, mmd, dit = models.MODELS["cmmd"], models.MODELS["mmdiffusion"], models.MODELS["dit"]
    official_cfg = mmd.preset("paper")
    mmd_shapes = {"video": (1, official_cfg.frames, official_cfg.video_channels, official_cfg.image_size,
                            official_cfg.image_size),
                  "audio": (1, official_cfg.audio_channels, official_cfg.audio_samples)}
    official = ([Network(OFFICIAL_NAME, lambda: OfficialForward(official_cfg), mmd_shapes)]
                if official_available() else [])
    return [
        Network("CMMD 16×16", lambda: cmmd.build("paper"),
                {"video": (1, CMMD_FRAMES, LATENT_CHANNELS, 16, 16), "audio": (1, MEL_BINS, MEL_STEPS)}),
        Network("CMMD 64×64", lambda: cmmd.build("paper"),
                {"video": (1, CMMD_FRAMES, LATENT_CHANNELS, 64, 64), "audio": (1, MEL_BINS, MEL_STEPS)}),
        Network("MM-Diffusion", lambda: mmd.build("paper"), mmd_shapes),
        *official,
        Network("DiT 16×16 (MM-LDM's size)", lambda: dit.build("paper"),
                {"video": (1, CMMD_FRAMES, LATENT_CHANNELS, 16, 16), "audio": (1, MEL_BINS, MEL_STEPS)}),
    ]


@dataclass
class Section:
    """One Markdown table of the report, with the records behind it for --json."""
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines + [""] + [f"- {n}" for n in self.notes])


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"{model}, {threads} thread{'s' if threads > 1 else ''}"


def count(net: Network) -> tuple[int, float]:
    """Parameters and GFLOP of one forward pass, counted on a meta-device copy (no memory, no time)."""
    with torch.device("meta"):
        model = net.build().eval()
        x = {k: torch.empty(s) for k, s in net.shapes.items()}
        n = torch.full((1,), STEP_N)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x, n)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 1e9


def time_fe(model, x: dict, n: torch.Tensor, mode: str, warmup: int, runs: int, budget: float):
    """Wall ms of each of `runs` forward passes after `warmup` ones, stopping early (after one) past `budget`
    s; on a CPU also the process's CPU ms of each (None on CUDA)."""
    device = n.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else nullcontext()
    cuda = device.type == "cuda"
    times, cpu_times = [], None if cuda else []
    with torch.inference_mode(), autocast:
        for _ in range(warmup):
            model(x, n)
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(runs):
            if cuda:  # events time the GPU work itself, not the host's launch loop
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                model(x, n)
                end.record()
                end.synchronize()
                times.append(begin.elapsed_time(end))
            else:
                t, c = time.perf_counter(), time.process_time()
                model(x, n)
                times.append((time.perf_counter() - t) * 1e3)
                cpu_times.append((time.process_time() - c) * 1e3)
            if budget and time.perf_counter() - start > budget:
                break
    return times, cpu_times


def fe_settings(args, device: torch.device) -> tuple[int, int, float, list[tuple[str, bool]]]:
    """(warm-up runs, timed runs, CPU time budget, [(mode, compiled)]) of the FE table: the flags, else the
    plan of --quick or of the device."""
    plan = QUICK if args.quick else FULL[device.type]
    warmup = plan["warmup"] if args.warmup is None else args.warmup
    runs = plan["runs"] if args.runs is None else args.runs
    budget = (plan["budget"] if device.type == "cpu" else 0.0) if args.budget is None else args.budget
    modes = args.modes or (["fp32", "bf16"] if device.type == "cuda" else ["fp32"])
    variants = [(m, False) for m in modes] + ([(m, True) for m in modes] if args.compile else [])
    return warmup, runs, budget, variants


def time_networks(fe: Section, device: torch.device, variants, warmup: int, runs: int, budget: float) -> dict:
    """Time every network in every (mode, compiled) variant, adding a row and a record to `fe` for each;
    returns {(mode label, network): {"wall": median ms, "cpu": median CPU ms}} for the ratios."""
    on_cpu = device.type == "cpu"
    env = [device_name(device), torch.__version__]
    stats = {}
    for net in networks():
        shapes = " + ".join("×".join(map(str, s[1:])) for s in net.shapes.values())
        params, gflop = count(net)
        model = net.build().to(device).eval()
        g = torch.Generator().manual_seed(0)
        x = {k: torch.randn(s, generator=g).to(device) for k, s in net.shapes.items()}
        n = torch.full((1,), STEP_N, device=device)
        for mode, compiled in variants:
            label = mode + (" + compile" if compiled else "")
            fn = torch.compile(model) if compiled else model
            ms, cpu_ms = time_fe(fn, x, n, mode, max(warmup, 2 if compiled else 0), runs, budget)
            stats[label, net.name] = {"wall": statistics.median(ms), "cpu": cpu_ms and statistics.median(cpu_ms)}
            fe.rows.append([*env, label, net.name, shapes, f"{params / 1e6:.2f}", f"{gflop:.1f}",
                            f"{statistics.median(ms):.1f}", f"{min(ms):.1f}", f"{max(ms):.1f}",
                            *([f"{statistics.median(cpu_ms):.1f}"] if on_cpu else []), str(len(ms))])
            fe.records.append(dict(device=env[0], torch=env[1], mode=label, model=net.name, input=shapes,
                                   params=params, gflop=gflop, ms=ms, cpu_ms=cpu_ms))
        del model, fn
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return stats


def fe_notes(fe: Section, stats: dict, warmup: int, runs: int, budget: float, on_cpu: bool) -> list[str]:
    """The FE table's notes: how it was timed, what its columns mean, and the official code's time ratio."""
    notes = [f"warm-up {warmup}, up to {runs} timed runs"
             + (f", at most {budget:.0f} s of timed runs per model" if budget else "")
             + (f"; torch.get_num_threads() = {torch.get_num_threads()}" if on_cpu else ""),
             "GFLOP/FE: torch.utils.flop_counter (matmuls, convolutions, attention), multiply-add = 2 FLOP.",
             "Absolute times mean something only on a GPU; on a CPU only the ratios do. On a shared CPU the wall "
             "time also counts other jobs; CPU ms/FE (this process's CPU time) does not."]
    for label in dict.fromkeys(r["mode"] for r in fe.records):
        if (label, OFFICIAL_NAME) in stats:  # the same network and weights count, another implementation
            ratio = stats[label, OFFICIAL_NAME]["wall"] / stats[label, "MM-Diffusion"]["wall"]
            notes.append(f"{label}: the official code takes {ratio:.2f}× the time of mmunet.py.")
    if not official_available():
        notes.append(f"no {OFFICIAL_NAME} row: {OFFICIAL_CODE} (or einops) is absent.")
    return notes


def ratio_section(fe: Section, stats: dict, on_cpu: bool) -> Section:
    """MM-Diffusion's time and GFLOP over each CMMD network's, measured and the paper's: Table 3's comparison."""
    refs = ("CMMD 16×16", "CMMD 64×64")
    ratio = Section("MM-Diffusion / CMMD", ["measure", *(f"vs {r}" for r in refs)], [])
    measures = [(f"{label} ms/FE", label, "wall") for label in dict.fromkeys(r["mode"] for r in fe.records)]
    if on_cpu:
        measures += [(f"{label} CPU ms/FE", label, "cpu") for label in dict.fromkeys(r["mode"] for r in fe.records)]
    for name, label, kind in measures:
        cells = [stats[label, "MM-Diffusion"][kind] / stats[label, ref][kind] for ref in refs]
        ratio.rows.append([name, *(f"{c:.2f}×" for c in cells)])
        ratio.records.append(dict(measure=name, **dict(zip(refs, cells))))
    gflops = {r["model"]: r["gflop"] for r in fe.records}
    for name, value in (("GFLOP/FE", gflops), ("paper, RTX Titan ms/FE", PAPER_MS)):
        cells = [value["MM-Diffusion"] / value[ref] for ref in refs]
        ratio.rows.append([name, *(f"{c:.2f}×" for c in cells)])
        ratio.records.append(dict(measure=name, **dict(zip(refs, cells))))
    ratio.notes = ["Ratios of medians; the paper's are 721 / 136 ms and 721 / 299 ms (CMMD Table 3)."]
    return ratio


def function_evaluation(args, device: torch.device) -> list[Section]:
    """Table 3's "Performance": ms per function evaluation (forward pass, batch 1), and the ratios."""
    warmup, runs, budget, variants = fe_settings(args, device)
    on_cpu = device.type == "cpu"
    fe = Section("Function evaluation (forward pass, batch 1)",
                 ["device", "torch", "mode", "model", "input", "params (M)", "GFLOP/FE", "ms/FE median", "min",
                  "max", *(["CPU ms/FE median"] if on_cpu else []), "runs"], [])
    stats = time_networks(fe, device, variants, warmup, runs, budget)
    fe.notes = fe_notes(fe, stats, warmup, runs, budget, on_cpu)
    return [fe, ratio_section(fe, stats, on_cpu)]


def paper_pipeline(device: torch.device, clip):
    """The paper preset with the SD-VAE and MelGAN at random weights (the cost does not depend on them)."""
    import diffusion
    import melgan
    import pipeline
    import vae
    model = models.MODELS["cmmd"].build("paper").to(device).eval()
    codecs = {"video": vae.SDVAECodec(vae.AutoencoderKL(vae.VAEConfig())).to(device),
              "audio": pipeline.MelCodec(melgan.Generator(melgan.MelGANConfig()).to(device).eval().vocode)}
    return pipeline.Pipeline(model, diffusion.Diffusion(diffusion.DiffusionConfig()), codecs, clip, {})


def end_to_end(args, device: torch.device) -> list[Section]:
    """Latency of `sample.py --v2a` on one 3.6 s clip (36 frames at 128 px), stage by stage: decode the
    mp4, SD-VAE encode, the sampler (the paper's, sampling.PAPER_SAMPLER, and sample.py's default), MelGAN
    vocoder, mux; then the sampling time per clip of every sampler and step count, without and with guidance.
    With --quick on a CPU each sampler runs QUICK_STEPS steps and longer runs are extrapolated from them
    (a step's cost does not depend on the step count)."""
    import tempfile

    import data
    import generate
    import media
    import pipeline
    import sampling
    import synthetic
    from modalities import to_unit
    clip = data.ClipConfig(frames=36, size=128)
    pipe = paper_pipeline(device, clip)
    if args.compile:
        pipe.net = pipeline.compile_net(pipe.net, device)
    item = synthetic.synthetic_clip(0, data.ClipConfig(frames=36, size=512, margin=0), "dance")
    quick = args.quick and device.type == "cpu"
    settings = [(s["sampler"], s["steps"]) for s in (sampling.PAPER_SAMPLER, pipeline.DEFAULT_SAMPLER)]
    names = [f"{s} {n}" for s, n in settings]
    section = Section("End-to-end `sample.py --v2a`, 3.6 s clip at 128 px (batch 1, seconds)",
                      ["stage", *names], [])
    columns = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = media.write_mp4(f"{tmp}/in.mp4", item["video"], item["audio"])
        for (sampler, steps), name in zip(settings, names):
            run = min(steps, QUICK_STEPS) if quick else steps
            watch = generate.Stopwatch()
            with watch("decode mp4"):
                frames = to_unit(media.read_av(src, frames=clip.frames, size=clip.size).video)
            out = generate.generate(pipe, pipe.sampler(sampler=sampler, steps=run), cond={"video": frames[None]},
                                  generator=torch.Generator(device).manual_seed(0), stopwatch=watch)
            with watch("mux mp4"):
                media.write_mp4(f"{tmp}/out.mp4", frames, out["audio"][0])
            t = {("sample" if k.startswith("sample") else k): v for k, v in watch.seconds.items()}
            t["sample"] *= steps / run
            columns[name] = (t, run != steps)
    for stage in columns[names[0]][0]:
        label = {"encode": "SD-VAE encode", "sample": "sampling", "decode audio": "MelGAN vocoder"}.get(stage, stage)
        section.rows.append([label, *(f"{columns[c][0][stage]:.2f}"
                                      + (" (extrapolated)" if columns[c][1] and stage == "sample" else "")
                                      for c in names)])
    section.rows.append(["total", *(f"{sum(columns[c][0].values()):.2f}" for c in names)])
    section.records = [dict(setting=c, extrapolated=columns[c][1], **columns[c][0]) for c in names]
    section.notes = ["Paper preset (108 M) on 4×16×36 latents + 80×224 mel; random SD-VAE and MelGAN weights; no "
                     "guidance (sample.py's default λ = 0)"
                     + ("; torch.compile'd network" if args.compile else "") + "."]
    return [section, samplers(args, device, pipe, clip)]


def samplers(args, device: torch.device, pipe, clip) -> Section:
    """Sampling seconds per clip (video→audio, batch 1: the network's steps on SD-VAE latents, no codecs) of
    each sampler at each step count, without guidance and with it (a backward pass per step): the cost side
    of experiments/samplers.py's quality table."""
    import generate
    import sampling
    g = torch.Generator().manual_seed(0)
    shapes = pipe.shapes(1, clip.frames)  # {"video": (1, F, C, H, W), "audio": (1, M, T)}
    latents = torch.randn(shapes.pop("video"), generator=g).to(device)
    quick = args.quick and device.type == "cpu"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    section = Section("Sampling per clip, 3.6 s video→audio at 128 px (batch 1, seconds)",
                      ["sampler", "guidance", *(f"S = {s}" for s in SAMPLER_STEPS)], [])
    for sampler in sampling.SOLVERS:
        for lam in (0.0, 1.0):
            per_step = {}
            for steps in ([QUICK_STEPS] if quick else SAMPLER_STEPS):
                watch = generate.Stopwatch()
                with watch("sample"), autocast:
                    sampling.sample(pipe.diffusion, pipe.net, shapes,
                                    pipe.sampler(sampler=sampler, steps=steps, guidance=lam),
                                    cond={"video": latents}, generator=torch.Generator(device).manual_seed(0),
                                    progress=False)
                per_step[steps] = watch.seconds["sample"] / steps
            cells = [per_step[s if s in per_step else QUICK_STEPS] * s for s in SAMPLER_STEPS]
            section.rows.append([sampler, "λ > 0" if lam else "none", *(f"{c:.2f}" for c in cells)])
            section.records.append(dict(sampler=sampler, guidance=lam, steps=list(SAMPLER_STEPS), seconds=cells,
                                        extrapolated=quick))
    section.notes = [(f"Extrapolated from one run of each sampler at {QUICK_STEPS} steps (--quick)." if quick
                      else "Each cell one run.") + " Encoding, vocoder and I/O are in the table above; a guided step "
                     "adds a backward pass through the network."]
    return section


DEMO_STEP_RUNS = 40  # timed training steps per setting and round of demo_training (after DEMO_STEP_WARMUP)
DEMO_STEP_WARMUP = 5


def demo_runs(settings: dict[str, dict], device: torch.device) -> dict:
    """Per setting (changes to demo.DEMO_TRAIN), the built run: {name: (one training step of the demo's batch,
    the network, one FE's input at batch 1)}, each built as train.py builds it (centring means included)."""
    import demo
    import pipeline
    import train
    runs = {}
    for name, change in settings.items():
        cfg = replace(demo.DEMO_TRAIN, data="synthetic", num_clips=64, seed=0, **change)
        _, pipe, dataset = train.build_run(cfg, device)
        model, codecs = pipe.net.train(), pipe.codecs
        opt = train.optimizer(model, cfg.lr)
        neg_cfg = train.negatives_config(pipe.clip, codecs, cfg.negatives)
        batch = torch.utils.data.default_collate([dataset[i] for i in range(cfg.batch)])
        gen = torch.Generator(device).manual_seed(0)

        def step(pipe=pipe, opt=opt, neg_cfg=neg_cfg, batch=batch, gen=gen, cfg=cfg):
            pipe.net.train()
            windows = pipeline.encode_batch(batch, pipe.codecs, device)
            loss, _ = train.step_loss(cfg, pipe, pipe.net, batch, windows, neg_cfg, gen, nullcontext())
            train.optimizer_step(opt, loss, cfg.lr, cfg.grad_clip)
        fe_input = {k: torch.randn(s, device=device) for k, s in pipe.net_shapes(1, pipe.clip.frames).items()}
        runs[name] = (step, model, fe_input)
    return runs


def fe_calls(runs: dict) -> dict[str, Callable]:
    """Per built run of demo_runs, one function evaluation at batch 1 (eval mode, no gradients)."""
    def fe(model, x):
        model.eval()
        with torch.inference_mode():
            model(x, torch.full((1,), STEP_N, device=next(model.parameters()).device))
    return {name: (lambda m=r[1], x=r[2]: fe(m, x)) for name, r in runs.items()}


def interleaved(calls: dict[str, Callable], warmup: int, runs: int, rounds: int = 3) -> dict[str, list[float]]:
    """Seconds of each call, the calls interleaved over `rounds` rounds (warm-up, then `runs` timed) so that a
    machine's drift falls on all alike."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(warmup):
                call()
            for _ in range(runs):
                t = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t)
    return times


def step_section(title: str, times: dict, params: dict) -> Section:
    """A table of seconds per call (median, min, max) with each network's parameters."""
    section = Section(title, ["network", "parameters", "median", "min", "max"],
                      [[name, f"{params[name] / 1e6:.2f} M", f"{statistics.median(t):.4f}", f"{min(t):.4f}",
                        f"{max(t):.4f}"] for name, t in times.items()])
    section.records = [dict(network=name, seconds=t, params=params[name]) for name, t in times.items()]
    return section


def demo_training(args, device: torch.device) -> list[Section]:
    """Seconds per training step of demo.py's run (nCMMD, batch 8, 16 px frames, Adam) for the old demo
    network (the tiny preset on raw pixels) and the demo's own (demo.DEMO_TRAIN), in one process."""
    runs = demo_runs({"tiny preset, raw pixels (the old demo)": dict(preset="tiny", patch=1, center=False),
                      "demo.DEMO_TRAIN (the demo)": {}}, device)
    times = interleaved({name: r[0] for name, r in runs.items()}, DEMO_STEP_WARMUP, DEMO_STEP_RUNS)
    section = step_section("Demo training step (batch 8, 16 px, seconds)", times,
                           {name: sum(p.numel() for p in r[1].parameters()) for name, r in runs.items()})
    old, new = (statistics.median(t) for t in times.values())
    section.notes = [f"old / new = {old / new:.2f}× per step; {3 * DEMO_STEP_RUNS} timed steps each, interleaved in "
                     f"three rounds; {torch.get_num_threads()} threads."]
    return [section]


BACKBONES = {"U-Net (cpu preset)": {}, "DiT (cpu preset)": dict(model="dit", preset="cpu")}  # demo.DEMO_TRAIN's
MMLDM_STAGES = {"MM-LDM autoencoder (cpu preset)": dict(model="mmldm-ae", preset="cpu"),
                "MM-LDM generator (cpu preset)": dict(model="mmldm", preset="cpu", cond_tasks=0.5)}


def mmldm_runs(device: torch.device) -> dict:
    """demo_runs of MM-LDM's two stages; its generator's on the latents of a one-step autoencoder (the cost of
    a step does not depend on the weights)."""
    import demo
    import train
    with tempfile.TemporaryDirectory() as tmp:
        ae = train.train(replace(demo.DEMO_TRAIN, data="synthetic", num_clips=64, steps=1, out=tmp, device=str(device),
                                 **MMLDM_STAGES["MM-LDM autoencoder (cpu preset)"]), progress=False)
        stages = {k: {**v, "ae": str(ae)} if v["model"] == "mmldm" else v for k, v in MMLDM_STAGES.items()}
        return demo_runs(stages, device)


def backbones(args, device: torch.device) -> list[Section]:
    """The two backbones at matched size on the demo's run (16 px through the patch-2 codec, the mel), in one
    process: ms per function evaluation at batch 1 (no gradients) and seconds per training step at the demo's
    batch, interleaved, with MM-LDM's two stages beside them in the step table. The step ratios fix
    experiments/backbones.py's and experiments/mmldm.py's equal-wall-time step counts."""
    runs = demo_runs(BACKBONES, device)
    fe_times = interleaved(fe_calls(runs), 5, 30)
    runs.update(mmldm_runs(device))
    params = {name: sum(p.numel() for p in r[1].parameters()) for name, r in runs.items()}
    step_times = interleaved({name: r[0] for name, r in runs.items()}, DEMO_STEP_WARMUP, DEMO_STEP_RUNS)
    fe_section = step_section("Backbones: one function evaluation (batch 1, the demo's shapes, seconds)",
                              fe_times, params)
    step = step_section("Backbones: one training step (the demo's batch 8, seconds)", step_times, params)
    u_fe, d_fe = (statistics.median(t) for t in fe_times.values())
    u_step, d_step, ae_step, g_step = (statistics.median(t) for t in step_times.values())
    fe_section.notes = [f"DiT / U-Net = {d_fe / u_fe:.2f}× per FE; 90 timed runs each, interleaved in three "
                        f"rounds; {torch.get_num_threads()} threads."]
    step.notes = [f"DiT / U-Net = {d_step / u_step:.2f}× per step: the U-Net's N steps take the time of "
                  f"{u_step / d_step:.2f}·N DiT steps.",
                  f"MM-LDM: autoencoder / U-Net = {ae_step / u_step:.3f}×, generator / U-Net = {g_step / u_step:.3f}× "
                  "per step (the generator's parameters exclude its frozen autoencoder's)."]
    return [fe_section, step]


def sections(args, device: torch.device) -> list[Section]:
    """Every table of the report, in order: each measurement is a builder returning its Sections."""
    if args.demo_step:
        return demo_training(args, device)
    if args.backbones:
        return backbones(args, device)
    return function_evaluation(args, device) + ([] if args.no_e2e else end_to_end(args, device))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if available)")
    p.add_argument("--quick", action="store_true",
                   help="few runs and warm-ups, one CPU thread and at most 60 s of timed runs per model on a CPU: "
                        "minutes on a CPU")
    p.add_argument("--modes", nargs="+", choices=["fp32", "bf16"],
                   help="precision modes (default: fp32 on CPU; fp32 and bf16 autocast on CUDA)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="also time torch.compile'd models (compile time goes into the warm-up), and compile "
                        "the end-to-end network (CUDA graphs on a GPU: pipeline.compile_net)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=False,
                   help="allow TF32 in CUDA fp32 matmuls and convolutions (off: true fp32, like the paper's GPU)")
    p.add_argument("--warmup", type=int, help="untimed forward passes per model and mode (default: see --quick)")
    p.add_argument("--runs", type=int, help="timed forward passes per model and mode (default: see --quick)")
    p.add_argument("--budget", type=float,
                   help="stop timing a model after this many seconds of timed runs (at least one run); 0: no limit")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 with --quick, else torch's choice)")
    p.add_argument("--json", help="also write the report's records to this JSON file")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end sample.py latency table")
    p.add_argument("--demo-step", action="store_true",
                   help="only the demo's training step time, old network against new (demo_training)")
    p.add_argument("--backbones", action="store_true",
                   help="only the U-Net against the DiT at the cpu presets: per FE and per training step")
    args = p.parse_args()

    threads = args.threads or (1 if args.quick else None)  # --quick: see the module docstring
    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench.py: --device cuda but torch sees no CUDA GPU")
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = True  # autotuned in the warm-up

    report = sections(args, device)
    print(f"## Speed: CMMD vs MM-Diffusion (CMMD Table 3)\n\ndevice: {device_name(device)}; torch {torch.__version__}"
          + (f"; TF32 {'on' if args.tf32 else 'off'}" if device.type == "cuda" else "") + "\n")
    for section in report:
        print(section.markdown() + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(device), "torch": torch.__version__, "args": vars(args),
                       "sections": [asdict(s) for s in report]}, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
