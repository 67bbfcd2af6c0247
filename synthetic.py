"""The synthetic benchmark: paired clips whose sound events and visual events coincide at known times,
drawn from a seed, so that audio-visual alignment can be measured against ground truth (the stand-in for
AIST++ of CMMD §3 on a CPU).

- "bounce": 1-3 balls bounce on the floor; at each impact the ball swells and flashes white (the largest
  frame change is into the impact frame itself) and a note sounds: a decaying sine
  x(t) = g·sin(2π f t)·e^(−t/τ) plus a short noise burst, f the ball's colour's pitch (C major), τ and
  the noise set by its size. Impacts lie on the frame grid, >= MIN_EVENT_GAP frames apart across balls.
- "dance": a figure jumps and swaps its pose on every beat of a kick/snare loop at a random tempo
  (90-150 bpm), a stand-in for AIST++ dance.
Every clip stores its event times (s from the positive clip's start), tempo and a caption written from its own
parameters (the kind, the balls' number, colours and sizes or the figure's colour, the background, the notes'
pitches, the tempo in bpm) in one of several phrasings; data.SyntheticDataset serves them as training,
validation and test splits, the test split in phrasings the others never use (PHRASINGS).
"""
import numpy as np
import torch

EVENTS_MAX = 32  # events are stored NaN-padded to this length so batches collate
PALETTE = np.array([[1, .2, .2], [.2, 1, .2], [.3, .4, 1], [1, 1, .2], [1, .2, 1], [.2, 1, 1]], np.float32)
PITCHES = np.array([261.6, 329.6, 392.0, 523.3, 659.3, 784.0], np.float32)  # Hz, C major, one per colour
COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")  # PALETTE's
NOTE_NAMES = ("C4", "E4", "G4", "C5", "E5", "G5")  # PITCHES'; a big ball sounds an octave lower
VARIANTS = ("bounce", "dance")
MIN_EVENT_GAP = 3  # frames between impacts of different balls: 10 fps cannot show closer events apart
MAX_TRIES = 20
NOISE_FLOOR = 0.002  # std of the background noise (-54 dBFS): a room tone between events, not digital silence


def _disk(yy, xx, cy, cx, r):
    """Soft-edged disks: centres and radii (F,) or scalars -> masks (F, S, S) in [0, 1]."""
    d = np.sqrt((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2)
    return np.clip(np.reshape(r, (-1, 1, 1)) - d + 0.5, 0, 1)


def _box(yy, xx, cy, cx, hh, hw):
    """Soft-edged axis-aligned boxes of half-sizes (hh, hw) centred at (F,) -> masks (F, S, S)."""
    dy = np.abs(yy[None] - cy[:, None, None]) - hh
    dx = np.abs(xx[None] - cx[:, None, None]) - hw
    return np.clip(0.5 - np.maximum(dy, dx), 0, 1)


def _hit(wav, t, sr, freq, decay, gain, noise, rng):
    """Add a percussive note at time t: a decaying sine at `freq` plus a short noise burst."""
    i0 = int(round(t * sr))
    if i0 >= len(wav) or i0 < 0:
        return
    n = min(int(0.35 * sr), len(wav) - i0)
    tt = np.arange(n, dtype=np.float32) / sr
    note = np.sin(2 * np.pi * freq * tt) * np.exp(-tt / decay)
    note += noise * rng.standard_normal(n).astype(np.float32) * np.exp(-tt / 0.012)
    wav[i0:i0 + n] += gain * note


def _ball_impacts(rng, Fw: int, taken: np.ndarray):
    """Draw a ball's bounce period and impact frames, kept >= MIN_EVENT_GAP from `taken` so events stay apart.
    Returns (gap, impacts), or None when MAX_TRIES draws found no room for this ball."""
    for _ in range(MAX_TRIES):  # keep impacts of different balls >= 3 frames apart: separate events
        gap = int(rng.integers(4, 9))  # frames between impacts: 0.4-0.8 s
        first = int(rng.integers(0, gap))
        impacts = np.arange(first - gap, Fw + gap, gap)  # frame indices; virtual ones beyond the window
        if taken.size == 0 or np.abs(impacts[:, None] - taken[None]).min() >= MIN_EVENT_GAP:
            return gap, impacts
    return None


def _paint_ball(canvas, yy, xx, impacts, gap: int, r: float, cx: np.ndarray, colour: int):
    """Paint one ball hopping between `impacts` onto canvas (Fw, S, S, 3); returns the new canvas."""
    Fw, S = canvas.shape[0], canvas.shape[1]
    prev = impacts[np.searchsorted(impacts, np.arange(Fw), side="right") - 1]
    u = (np.arange(Fw) - prev) / gap  # phase in the current bounce
    since = np.arange(Fw) - prev  # frames since the last impact
    pop = np.exp(-since / 1.0)  # 1 on the impact frame, then a fast fade
    floor = S - 1.35 * r - 1
    cy = floor - S * 0.12 * 4 * u * (1 - u)  # a low hop, on the floor at impacts
    # The ball swells and flashes white on impact and fades back, so the largest frame change
    # is into the impact frame itself (a visual onset at the sound's onset).
    mask = _disk(yy, xx, cy, cx, r * (1 + 0.35 * pop))[..., None]  # (Fw, S, S, 1)
    flash = (0.8 * pop).astype(np.float32)[:, None, None, None]
    colour_px = (0.45 + 0.55 * pop[:, None, None, None]) * (PALETTE[colour] * (1 - flash) + flash)
    return canvas * (1 - mask) + mask * colour_px


def _draw_bounce(rng, clip, yy, xx, canvas, wav):
    """The "bounce" variant: paint 1-3 balls and add a note to wav at each impact; returns (canvas, events,
    the caption's facts)."""
    S, Fw, sr = clip.size, clip.window_frames, clip.sample_rate
    events = []
    n_obj = int(rng.integers(1, 4))
    columns = rng.permutation(3)[:n_obj]
    taken = np.zeros(0, int)  # impact frames of the balls drawn so far
    balls = []  # (colour, big) of each ball drawn, for the caption
    for k in range(n_obj):
        colour = int(rng.integers(len(PALETTE)))
        big = bool(rng.integers(2))
        r = S * (0.13 if big else 0.08)
        drawn = _ball_impacts(rng, Fw, taken)
        if drawn is None:
            continue  # no room for this ball
        gap, impacts = drawn
        balls.append((colour, big))
        taken = np.concatenate([taken, impacts])
        cx = np.full(Fw, S * (0.2 + 0.3 * columns[k]) + rng.uniform(-2, 2))
        canvas = _paint_ball(canvas, yy, xx, impacts, gap, r, cx, colour)
        for f in impacts[(impacts >= 0) & (impacts < Fw)]:
            t = f / clip.fps
            _hit(wav, t, sr, PITCHES[colour] / (2 if big else 1), 0.12 if big else 0.06, 0.5,
                 0.6 if big else 0.2, rng)
            events.append(t)
    return canvas, events, {"kind": "bounce", "balls": balls}


def _draw_dance(rng, clip, yy, xx, t_frames, canvas, wav):
    """The "dance" variant: a figure hopping to a kick/snare loop; returns (canvas, beat times, tempo, the
    caption's facts)."""
    S, sr = clip.size, clip.sample_rate
    tempo = float(rng.uniform(90, 150))
    period = 60.0 / tempo
    beats = np.arange(rng.uniform(0, period), clip.window_samples / sr, period)
    k = np.searchsorted(beats, t_frames, side="right") - 1  # index of the last beat (-1: none yet)
    since = np.where(k >= 0, t_frames - np.append(beats, 0.0)[np.maximum(k, 0)], 1.0)  # beats may be empty
    jump = S * 0.12 * np.exp(-since / 0.08)  # a sharp hop on each beat
    side = np.where(k % 2 == 0, 1.0, -1.0) * S * 0.08  # the pose swaps sides on each beat
    colour_index = int(rng.integers(len(PALETTE)))
    colour = PALETTE[colour_index]
    cx, base = S / 2 + side, S * 0.62 - jump
    body = _box(yy, xx, base, cx, S * 0.14, S * 0.06)
    head = _disk(yy, xx, base - S * 0.22, cx, S * 0.07)
    arm = _box(yy, xx, base - S * 0.10 - side, cx + 2 * side, S * 0.03, S * 0.12)
    mask = np.clip(body + head + arm, 0, 1)[..., None]  # (Fw, S, S, 1)
    canvas = canvas * (1 - mask) + mask * colour
    for i, t in enumerate(beats):
        _hit(wav, t, sr, 60.0, 0.10, 0.8, 0.3, rng)  # kick on every beat
        if i % 2:
            _hit(wav, t, sr, 180.0, 0.05, 0.3, 1.5, rng)  # snare on the off beats of the bar
    return canvas, list(beats), tempo, {"kind": "dance", "colour": colour_index, "bpm": round(tempo)}


def background_name(rgb: np.ndarray) -> str:
    """A dark background's colour in words: its strongest channel, or the mix of its two strongest when they are
    close, or grey when no channel stands out."""
    order = np.argsort(rgb)[::-1]
    if rgb[order[0]] - rgb[order[2]] < 0.03:
        return "grey"
    if rgb[order[0]] - rgb[order[1]] < 0.03:
        return {(0, 1): "olive", (0, 2): "purple", (1, 2): "teal"}[tuple(sorted(order[:2].tolist()))]
    return ("red", "green", "blue")[order[0]]


def _ball_words(balls: list) -> tuple[str, str, str]:
    """(the balls, their notes, their colours) in words: ("a big red ball and a small blue ball", "C3 and E5",
    "red and blue")."""
    def join(words):
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return (join([f"a {'big' if big else 'small'} {COLOUR_NAMES[c]} ball" for c, big in balls]),
            join([NOTE_NAMES[c][0] + str(int(NOTE_NAMES[c][1]) - big) for c, big in balls]),
            join([COLOUR_NAMES[c] for c, _ in balls]))


# Caption templates per kind; the last of each is held out for the test split (data.SyntheticDataset).
PHRASINGS = {
    "bounce": ("{balls} bouncing on a dark {bg} background, each bounce ringing {notes}.",
               "A dark {bg} scene where {n} ball{s} bounce{vs}; every impact plays {notes}.",
               "{N} bouncing ball{s} ({colours}) over dark {bg}, the note{s} {notes} on each hit.",
               "The sound of {notes} as {balls} hit{vs} the floor, in front of dark {bg}.",
               "On a dark {bg} ground, {balls} bounce{vs} and chime{vs} {notes}."),
    "dance": ("A {colour} figure dancing to a kick and snare loop at {bpm} bpm on a dark {bg} background.",
              "Drums at {bpm} bpm; a {colour} dancer hops on every beat in front of dark {bg}.",
              "A {bpm} bpm drum loop with a {colour} figure jumping to the beat over dark {bg}.",
              "A dark {bg} stage where a {colour} figure dances to {bpm} beats per minute.",
              "Kick and snare at {bpm} bpm, and a {colour} figure swapping poses on each beat against dark {bg}."),
}
NUMBERS = ("no", "one", "two", "three")


def caption(facts: dict, background: np.ndarray, phrasing: int) -> str:
    """A clip's caption from its facts (the draw functions') in phrasing `phrasing` of PHRASINGS[kind]."""
    words = {"bg": background_name(background)}
    if facts["kind"] == "bounce":
        n = len(facts["balls"])
        balls, notes, colours = _ball_words(facts["balls"]) if n else ("no ball", "nothing", "none")
        words.update(balls=balls, notes=notes, colours=colours, n=NUMBERS[n], N=NUMBERS[n].capitalize(),
                     s="" if n == 1 else "s", vs="s" if n == 1 else "")  # the noun's plural, the verb's
    else:
        words.update(colour=COLOUR_NAMES[facts["colour"]], bpm=facts["bpm"])
    text = PHRASINGS[facts["kind"]][phrasing].format(**words)
    return text[0].upper() + text[1:]


def _pack_clip(clip, canvas, wav, events, tempo: float, max_events: int) -> dict:
    """Turn the drawn canvas, waveform and event times into the clip's tensors (events NaN-padded to collate)."""
    offset = clip.margin / clip.fps
    ev = np.unique(np.round(np.asarray(events, np.float64) - offset, 6))
    ev = ev[(ev >= 0) & (ev < clip.duration)][:max_events]
    padded = np.full(max_events, np.nan, np.float32)
    padded[:len(ev)] = ev
    video = torch.from_numpy((canvas * 255).round().clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2)  # (Fw, 3, S, S)
    audio = torch.from_numpy(np.clip(wav, -1, 1))  # (Lw,)
    return {"video": video.contiguous(), "audio": audio, "events": torch.from_numpy(padded),
            "tempo": torch.tensor(tempo, dtype=torch.float32)}


def synthetic_clip(seed: int, clip, variant: str = "bounce", max_events: int = EVENTS_MAX, phrasing: int = 0) -> dict:
    """One deterministic window (frames + 2·margin) of the synthetic benchmark, of the geometry of `clip`
    (a data.ClipConfig), variant "bounce" or "dance" (the module docstring).
    Returns video uint8 (Fw, 3, S, S), audio float32 (Lw,), events (max_events,) in seconds from the
    positive clip's start (NaN-padded; long clips need more than EVENTS_MAX), tempo (bpm; 0 for "bounce") and
    caption (a str, in phrasing `phrasing` of PHRASINGS[variant]).
    """
    rng = np.random.default_rng(seed)
    S, Fw = clip.size, clip.window_frames
    t_frames = np.arange(Fw, dtype=np.float32) / clip.fps  # frame times, seconds from window start
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    background = rng.uniform(0, 0.15, 3).astype(np.float32)
    canvas = np.broadcast_to(background, (Fw, S, S, 3)).copy()
    wav = (NOISE_FLOOR * rng.standard_normal(clip.window_samples)).astype(np.float32)
    tempo = 0.0
    if variant == "bounce":
        canvas, events, facts = _draw_bounce(rng, clip, yy, xx, canvas, wav)
    elif variant == "dance":
        canvas, events, tempo, facts = _draw_dance(rng, clip, yy, xx, t_frames, canvas, wav)
    else:
        raise ValueError(f"unknown synthetic variant {variant!r}; choose from {VARIANTS}")
    return {**_pack_clip(clip, canvas, wav, events, tempo, max_events),
            "caption": caption(facts, background, phrasing)}

