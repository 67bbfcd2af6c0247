"""What the command-line scripts share: flags generated from a dataclass config (its defaults live only
there), and the one-line error on stderr with a non-zero exit for every problem a user can cause."""
import argparse
import dataclasses
import math
import sys


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip=(), unset: bool = False):
    """One flag per field of dataclass `cls`, with its help (field metadata "help") and default; booleans
    get --x/--no-x. unset=True: every flag defaults to None ("not given"), so that a value stored elsewhere
    (a checkpoint's) can stand unless the user gives one; the help still shows the dataclass default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, helptext = "--" + f.name.replace("_", "-"), f.metadata.get("help", f.name)
        default = f.default
        shown = f" (default: {default})" if not unset else f" (default: the checkpoint's, else {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None if unset else default,
                                help=helptext + (shown if unset else ""))
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=kind, default=None if unset else default, choices=f.metadata.get("choices"),
                                help=helptext + shown)


def dataclass_fields(args: argparse.Namespace, cls, skip=()) -> dict:
    """The values of `cls`'s fields in parsed `args` (None where a flag with unset=True was not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip}


def errors() -> tuple:
    """The exception types that carry a one-line message for the user: a bad input file, a bad checkpoint or
    weights file, a bad flag (all ValueErrors)."""
    import checkpoint
    import media
    return media.BadInput, checkpoint.CheckpointError, ValueError


def run(main, *args):
    """Call main(*args); a user's problem ends the process with `error: MESSAGE` on stderr and exit 1."""
    try:
        return main(*args)
    except errors() as e:
        sys.exit(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    except KeyboardInterrupt:
        sys.exit("interrupted")


def device(name: str):
    """--device as a torch.device: auto (CUDA if there is one), cpu, cuda or cuda:N, checked before any work."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r}: not a device; choose auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only cpu and cuda are supported")
    return dev


def check_range(flag: str, value, low=None, high=None, *, above: bool = False) -> None:
    """A numeric flag that is finite and >= `low` (> `low` with above=True) and <= `high`; one line otherwise,
    before any work. Finiteness comes first: NaN compares false with everything, so `x < 0` lets it through."""
    if value is None:
        return
    ok = (math.isfinite(value) and (low is None or (value > low if above else value >= low))
          and (high is None or value <= high))
    if not ok:
        want = [f"{'>' if above else '>='} {low:g}"] if low is not None else []
        want += [f"<= {high:g}"] if high is not None else []
        kind = "an integer" if isinstance(value, int) else "a finite number"
        raise ValueError(f"--{flag.replace('_', '-')} must be {kind} {' and '.join(want)}, got {value}")


def check_writable_dir(path, flag: str = "--out") -> None:
    """An output folder (of `flag`) that exists and is writable, or can be made; one line otherwise, before
    any work."""
    import os
    from pathlib import Path
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a directory ({flag} needs a folder there)")
    parent = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"{parent}: not a directory, so {path} cannot be made ({flag})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{parent}: not writable ({flag} {path})")


def experiment_parser(doc: str, out: str, clips: int, clips_help: str) -> argparse.ArgumentParser:
    """The flags every experiment on a trained run shares: --ckpt (the demo's run by default), --out, --clips;
    the description is the module docstring's first paragraph."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", default="runs/demo/model", help="a checkpoint, or a run folder (its newest)")
    p.add_argument("--out", default=out, help="output folder")
    p.add_argument("--clips", type=int, default=clips, help=clips_help)
    return p
