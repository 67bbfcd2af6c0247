"""Files that must never be half-written, and the checkpoints that describe themselves.

- `atomic_path` / `write_text`: every output the project writes (mp4, wav, png, html, json, shard,
  checkpoint) is first written under a temporary name in its own folder, then renamed over the target,
  so an interrupted or failed write leaves the previous file as it was. The file gets the permissions
  the user's umask gives a new file, whatever its writer chose.
- `save` / `read`: a checkpoint is one safetensors file whose metadata key "cmmd" holds its whole config
  as JSON. `load_strict` loads a module's weights from it by prefix with strict=True and names the keys
  that do not fit. `reading` opens any safetensors file (the MelGAN checkpoints, the SD-VAE weights) and
  `torch_load` any torch.save file (the I3D, VGGish and official MM-Diffusion weights) with the same
  one-line errors. `latest` finds the newest in a run folder; `resolve` turns `--ckpt` into a file (a
  path, a Hugging Face Hub repo id, or the newest checkpoint under runs/).
Every problem is a `CheckpointError`, one line naming the file: the one error type for weights and
checkpoints in the project.
"""
import contextlib
import json
import os
import re
import secrets
from pathlib import Path

import torch

CONFIG_KEY = "cmmd"  # safetensors metadata key of the config JSON
PATTERN = "ckpt-*.safetensors"  # train.py's checkpoint names, ckpt-STEP.safetensors
RUNS = Path("runs")  # where train.py and demo.py write runs by default
HUB_FILENAME = "model.safetensors"  # the file a Hub repo id names: the usual name of a safetensors model
HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, not ours or not fitting; the message is one line."""


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of our own, not mkstemp's: the file gets the user's umask, not 0600
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # some writers (safetensors) create 0600 files whatever the umask
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def torch_save(obj, path) -> Path:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save(path, tensors: dict, config: dict, **metadata) -> Path:
    """A safetensors file of `tensors` (moved to the CPU, contiguous) with `config` in its metadata."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp),
                  metadata={CONFIG_KEY: json.dumps(config), **{k: str(v) for k, v in metadata.items()}})
    return Path(path)


@contextlib.contextmanager
def reading(path, what: str):
    """Yield `path` (a Path) for reading a safetensors `what` in the block: a directory, a missing or
    unreadable file and safetensors' own errors (a truncated or foreign file) become one-line
    CheckpointErrors naming it."""
    from safetensors import SafetensorError
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a {what} file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        yield path
    except PermissionError:
        raise CheckpointError(f"{path}: not readable (permission denied)") from None
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors {what} ({type(e).__name__})") from None


def config(path, what: str = "cmmd checkpoint") -> dict:
    """The config of a checkpoint written by `save`, read from its header alone (no tensor is loaded)."""
    from safetensors import safe_open
    with reading(path, what) as path:
        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get(CONFIG_KEY)
        if meta is None:
            raise CheckpointError(f"{path}: not a {what} (no '{CONFIG_KEY}' config in its metadata)")
        return json.loads(meta)


def read(path, what: str = "cmmd checkpoint") -> tuple[dict, dict]:
    """(config, tensors) of a checkpoint written by `save`."""
    from safetensors.torch import load_file
    meta = config(path, what)
    with reading(path, what) as path:
        return meta, load_file(str(path))


def torch_load(path, what: str) -> dict:
    """The dict a torch.save file holds (a state dict, or a training state of tensors, numbers and dicts),
    on the CPU, unpickled with weights_only=True; anything else is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such {what}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises anything from UnpicklingError to RuntimeError on a bad file
        raise CheckpointError(f"{path}: not a {what} ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a {what} (a {type(obj).__name__}, not a dict)")
    return obj


def load_strict(module: torch.nn.Module, tensors: dict, prefix: str, path,
                what: str = "the network") -> torch.nn.Module:
    """Load the tensors under `prefix` into `module` with strict=True; name what does not fit `what`."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit {what} ({len(missing)} missing, e.g. {missing[:2]}; "
                              f"{len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{path}: {prefix}{k} has shape {tuple(state[k].shape)} where {what} has "
                              f"{tuple(own[k].shape)}")
    module.load_state_dict(state, strict=True)
    return module


def latest(folder, pattern: str = PATTERN, complete=lambda p: True) -> Path | None:
    """The newest checkpoint in `folder` (names sort by step) that `complete` accepts, or None."""
    found = [p for p in sorted(Path(folder).glob(pattern)) if complete(p)]
    return found[-1] if found else None


def newest_under(root=RUNS, pattern: str = PATTERN) -> Path | None:
    """The most recently written checkpoint anywhere under `root`, or None."""
    found = [p for p in Path(root).rglob(pattern) if p.is_file()] if Path(root).is_dir() else []
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


def resolve(ckpt: str | None, root=RUNS) -> tuple[Path, str]:
    """`--ckpt` as a file, and how it was found: a path (a run folder: its newest checkpoint); else a Hugging
    Face Hub repo id (org/name, its HUB_FILENAME, downloaded or from the local Hub cache); else, with no
    --ckpt, the newest checkpoint under `root` (runs/, where `python demo.py` and train.py write)."""
    if ckpt is None:
        found = newest_under(root)
        if found is None:
            raise CheckpointError(f"no --ckpt given and no checkpoint under {Path(root)}/: make one with "
                                  f"`python demo.py` (CPU, minutes) or `python train.py --out runs/NAME ...`, "
                                  f"or pass --ckpt PATH")
        return found, f"using the newest checkpoint under {Path(root)}/: {found}"
    path = Path(ckpt).expanduser()
    if path.is_dir():  # a run folder: its newest checkpoint
        found = latest(path)
        if found is None:
            raise CheckpointError(f"{path}: a folder with no checkpoint ({PATTERN}) in it")
        return found, f"using the newest checkpoint in {path}/: {found.name}"
    if path.exists() or not HUB_REPO.match(ckpt) or ckpt.endswith(".safetensors"):
        return path, ""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    try:
        file = huggingface_hub.hf_hub_download(ckpt, HUB_FILENAME)
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{ckpt}: not a local file, and the Hugging Face Hub cannot be reached to download its "
                              f"{HUB_FILENAME} (offline?); download it from https://huggingface.co/{ckpt} on a "
                              f"connected machine and pass --ckpt PATH/{HUB_FILENAME}") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: no {HUB_FILENAME} on the Hugging Face Hub ({type(e).__name__})") from None
    return Path(file), f"{ckpt}: {HUB_FILENAME} from the Hugging Face Hub"
