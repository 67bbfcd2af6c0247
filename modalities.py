"""The two modalities and what every file needs to know of them: their names in the fixed order in which
noise is drawn, their tensor ranks and time axes, and the pixel range.

Video is (B, F, C, H, W) and audio (B, M, T) in model space (a raw waveform is (B, 1, L)); pixels are stored
as uint8 and modelled in [-1, 1].
"""
import torch

MODALITIES = ("video", "audio")  # fixed order: noise is drawn in this order, so seeds are reproducible
OTHER = {"video": "audio", "audio": "video"}
NDIM = {"video": 5, "audio": 3}  # (B, F, C, H, W) and (B, M, T)
TIME_AXIS = {"video": 1, "audio": 2}  # F and T


def check(x: dict, what: str):
    """Assert that x is {modality: tensor of its rank}, with one batch size."""
    for k, t in x.items():
        assert k in NDIM, f"{what}: unknown modality {k!r}, expected keys from {MODALITIES}"
        assert t.ndim == NDIM[k], f"{what}: {k} must have {NDIM[k]} dims (B, ...), got {tuple(t.shape)}"
    shapes = {k: tuple(t.shape) for k, t in x.items()}
    assert len({s[0] for s in shapes.values()}) == 1, f"{what}: batch sizes differ: {shapes}"


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in 0…255 -> float in [-1, 1]."""
    return pixels.float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in [-1, 1] (clamped) -> uint8, rounded; uint8 is returned as it is."""
    if x.dtype == torch.uint8:
        return x
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def with_time(shape: tuple, modality: str, length: int) -> tuple:
    """`shape` with its time axis (F or T) set to `length`."""
    axis = TIME_AXIS[modality]
    return (*shape[:axis], length, *shape[axis + 1:])
