"""Negative pairs for the joint contrastive loss (CMMD §2.2 "Creating Negative Samples", App. B.2, Eq. 6).

The data pipeline yields WINDOWS: the positive clip with a margin of real neighbouring content on each side
of the time axis (data.py, ClipConfig.margin): video (B, F + 2m, C, H, W) with m frames (time axis 1), audio
(B, M, T + 2m_a) with m_a mel steps, or samples for a waveform (time axis last). The positive is the centre.
A negative of one modality is paired with the other modality's positive, e.g. (v, a¬) and (v¬, a). Kinds:
  "shift":        the signal moved 2–4 video frames (200–400 ms; 12–25 mel steps) backward or forward,
                  read from the window's margin, never wrapped around (CMMD App. B.2);
  "segment_swap": concat(d[:s], x[s:]) or concat(x[:s], d[s:]) with another clip d of the batch and a
                  random split point s;
  "swap":         another clip of the batch, never the clip itself (needs B >= 2; with B = 1 only "shift").
Shift ranges and margins are in each modality's own time steps; NegativesConfig.waveform() scales the audio
ones from video frames to samples. How kinds and split points are drawn: docs/training.md.
"""
from dataclasses import dataclass, field

import torch

from modalities import MODALITIES, NDIM, TIME_AXIS

KINDS = ("shift", "segment_swap", "swap")
VIDEO_MARGIN = 4  # frames each side, data.ClipConfig.margin
VIDEO_SHIFT = (2, 4)  # frames, 200–400 ms at 10 fps (CMMD App. B.2)
AUDIO_MARGIN_MEL = 25  # mel steps, data.ClipConfig.margin_mel = 6400 // 256
AUDIO_SHIFT_MEL = (12, 25)  # mel steps, 200–400 ms at a 16 ms hop (CMMD App. B.2)


@dataclass
class NegativesConfig:
    kinds: tuple = KINDS  # which of KINDS to draw from (CMMD §2.2: all three)
    negate: tuple = ("audio", "video")  # modalities that get negatives: (v, a¬) and (v¬, a) terms of Eq. 6
    num_per_modality: int = 1  # [choice] negative batches per modality and step (paper: "a subset"); one draw
    # per expectation of Eq. 6
    margin: dict = field(default_factory=lambda: {"video": VIDEO_MARGIN, "audio": AUDIO_MARGIN_MEL})  # steps each side
    shift: dict = field(default_factory=lambda: {"video": VIDEO_SHIFT, "audio": AUDIO_SHIFT_MEL})  # (min, max) steps
    split: tuple = (0.25, 0.75)  # range of the segment-swap split point, as a fraction of the clip length
    # [choice] so a segment-swap negative keeps a quarter of each clip (paper: "a random split point")

    def __post_init__(self):
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"negatives.py: kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if any(k not in MODALITIES for k in self.negate):
            raise ValueError(f"negatives.py: negate must name modalities from {MODALITIES}, got {self.negate}")
        for k in MODALITIES:
            lo, hi = self.shift[k]
            if not 1 <= lo <= hi <= self.margin[k]:
                raise ValueError(f"negatives.py: {k} shift {self.shift[k]} must be 1 <= min <= max <= margin "
                                 f"{self.margin[k]}")
        if not 0 < self.split[0] <= self.split[1] < 1:
            raise ValueError(f"negatives.py: split must satisfy 0 < lo <= hi < 1, got {self.split}")

    @classmethod
    def waveform(cls, samples_per_frame: int = 1600, **kwargs):
        """Audio as a raw waveform (B, 1, L): the audio margin and shift are the video's in samples."""
        margin = {"video": VIDEO_MARGIN, "audio": VIDEO_MARGIN * samples_per_frame}
        shift = {"video": VIDEO_SHIFT, "audio": tuple(f * samples_per_frame for f in VIDEO_SHIFT)}
        return cls(margin=margin, shift=shift, **kwargs)


def _time_first(x: torch.Tensor, modality: str) -> torch.Tensor:
    return x.movedim(TIME_AXIS[modality], 1)  # (B, T, ...) for either modality


def _time_back(x: torch.Tensor, modality: str) -> torch.Tensor:
    return x.movedim(1, TIME_AXIS[modality])  # back to the modality's own layout


def _randint(lo, hi, size, generator, device) -> torch.Tensor:
    """Integers uniform in [lo, hi], drawn on the generator's device, returned on `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(lo, hi + 1, size, generator=generator, device=gen_device).to(device)


def crop(window: torch.Tensor, margin: int, modality: str) -> torch.Tensor:
    """The positive clip: the window without its `margin` steps on each side of the time axis."""
    assert window.ndim == NDIM[modality], \
        f"{modality} window must have {NDIM[modality]} dims, got {tuple(window.shape)}"
    length = window.shape[TIME_AXIS[modality]] - 2 * margin
    assert length > 0, \
        f"{modality} window of {window.shape[TIME_AXIS[modality]]} steps is shorter than 2 × margin {margin}"
    return window.narrow(TIME_AXIS[modality], margin, length)


def shifted(window: torch.Tensor, margin: int, offset: torch.Tensor, modality: str) -> torch.Tensor:
    """The clip moved by offset (B,) steps (|offset| <= margin; positive = later content), read from the window."""
    w = _time_first(window, modality)  # (B, T + 2m, ...)
    B, length = w.shape[0], w.shape[1] - 2 * margin
    assert offset.shape == (B,) and offset.abs().max() <= margin, \
        f"offsets {offset.tolist()} exceed the margin {margin}"
    idx = margin + offset.view(B, 1) + torch.arange(length, device=w.device)  # (B, T)
    return _time_back(w[torch.arange(B, device=w.device).view(B, 1), idx], modality)  # (B, T, ...) -> own layout


def segment_swapped(x: torch.Tensor, other: torch.Tensor, split: torch.Tensor, other_first: torch.Tensor,
                    modality: str) -> torch.Tensor:
    """concat(d[:s], x[s:]) where other_first, else concat(x[:s], d[s:]); d = other, s = split (B,)."""
    xt, dt = _time_first(x, modality), _time_first(other, modality)  # (B, T, ...)
    B, T = xt.shape[:2]
    left = torch.arange(T, device=xt.device).view(1, T) < split.view(B, 1)  # (B, T): steps before s
    from_other = (left == other_first.view(B, 1)).view(B, T, *[1] * (xt.ndim - 2))  # (B, T, 1, ...)
    return _time_back(torch.where(from_other, dt, xt), modality)


def other_clip(B: int, generator=None, device=None) -> torch.Tensor:
    """For each example, the index of another clip of the batch, uniform over the B − 1 others (B,)."""
    assert B >= 2, "negatives.py: swapping needs a batch of at least 2 clips"
    return (torch.arange(B, device=device) + _randint(1, B - 1, (B,), generator, device)) % B


def negative(windows: dict, modality: str, cfg: NegativesConfig, generator=None) -> torch.Tensor:
    """One negative batch of `modality` (the clip's shape), a kind from cfg.kinds drawn per example."""
    window = windows[modality]
    B, device, m = window.shape[0], window.device, cfg.margin[modality]
    kinds = list(cfg.kinds) if B >= 2 else ["shift"]
    pos = crop(window, m, modality)
    T = pos.shape[TIME_AXIS[modality]]
    candidates = []
    for kind in kinds:  # each kind for the whole batch, then one picked per example (cheap: these are inputs)
        if kind == "shift":
            k = _randint(*cfg.shift[modality], (B,), generator, device)
            sign = _randint(0, 1, (B,), generator, device) * 2 - 1
            candidates.append(shifted(window, m, sign * k, modality))
        elif kind == "segment_swap":
            d = pos[other_clip(B, generator, device)]
            s = _randint(max(1, round(cfg.split[0] * T)), min(T - 1, round(cfg.split[1] * T)), (B,), generator, device)
            candidates.append(segment_swapped(pos, d, s, _randint(0, 1, (B,), generator, device).bool(), modality))
        else:  # "swap"
            candidates.append(pos[other_clip(B, generator, device)])
    pick = _randint(0, len(kinds) - 1, (B,), generator, device)  # [choice] a kind per example: batches mix kinds
    return torch.stack(candidates)[pick, torch.arange(B, device=device)]  # (B, ...) kind pick[b] for example b


def positive(windows: dict, cfg: NegativesConfig) -> dict:
    """The positive pair: each window's centre."""
    return {k: crop(w, cfg.margin[k], k) for k, w in windows.items()}


def draw_negatives(windows: dict, cfg: NegativesConfig, generator=None) -> list:
    """The negative pairs of one step, for diffusion.Diffusion.contrastive_loss (CMMD Eq. 6, Algorithm 1).

    windows: {"video": (B, F + 2m, C, H, W), "audio": (B, M, T + 2m_a)}. Returns, for each modality in
    cfg.negate and cfg.num_per_modality times, a pair with that modality negated and the other positive:
    [{"video": v, "audio": a¬}, {"video": v¬, "audio": a}, …].
    """
    assert set(windows) == set(MODALITIES), f"negatives.py: windows need keys {MODALITIES}, got {list(windows)}"
    assert len({w.shape[0] for w in windows.values()}) == 1, "negatives.py: video and audio batch sizes differ"
    pos = positive(windows, cfg)
    return [{**pos, k: negative(windows, k, cfg, generator)}
            for _ in range(cfg.num_per_modality) for k in cfg.negate]
