"""Text: captions to token embeddings for a text-conditioned network (the text→audio-video task of the field:
MMAudio, Ovi, LTX-2, JavisDiT; the two-step text→video→audio pipeline of Kim et al.'s seed 002).

Two kinds of encoder, chosen by TextConfig.encoder:

- "byt5-scratch" (the default, and the one that runs offline): T5's encoder (Raffel et al. 2020) at a small
  size, with ByT5's tokenizer (Xue et al. 2022), which reads UTF-8 bytes and needs no vocabulary file, trained
  from scratch with the diffusion model. [choice] On the synthetic captions (a few dozen words) a byte-level
  encoder learns the words it needs from the clips; no download is possible here.
- a Hugging Face Hub id or a folder of a T5-family encoder (for example "google/t5-v1_1-base" or
  "google/flan-t5-large"): loaded with `transformers`, frozen, and kept out of the checkpoint (its
  config names it, and `sample.py` loads it again from the Hub or the folder).

Shapes besides the README's: S_t text tokens, E the encoder's width.
"""
import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

SCRATCH = "byt5-scratch"
BYTE_VOCAB = 384  # ByT5's: 3 special tokens, 256 bytes, 125 extra ids


@dataclass
class TextConfig:
    """The text encoder; the sizes are the scratch encoder's (a Hub encoder brings its own)."""
    encoder: str = SCRATCH  # "byt5-scratch", or a Hub id or folder of a T5-family encoder (frozen)
    width: int = 128  # E (T5's d_model)
    layers: int = 2
    heads: int = 4
    max_tokens: int = 160  # tokens kept per caption (ByT5: bytes + EOS; the synthetic captions are at most 140)

    def __post_init__(self):
        for name in ("width", "layers", "heads", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"text.py: {name} must be positive, got {getattr(self, name)}")
        if self.encoder == SCRATCH and self.width % self.heads:
            raise ValueError(f"text.py: width {self.width} not divisible by heads {self.heads}")


class TextEncoder(nn.Module):
    """captions (list of B str) -> (tokens (B, S_t, E), mask (B, S_t) bool, True on real tokens). "" is the
    empty caption: only the end-of-sequence token, which a model trained with dropped captions reads as "no
    text" (classifier-free guidance's unconditioned input)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        from transformers import ByT5Tokenizer, T5Config, T5EncoderModel
        self.cfg = cfg
        if cfg.encoder == SCRATCH:
            self.tokenizer = ByT5Tokenizer()
            # its T5Stack alone: T5EncoderModel ties a second name to the token embedding, which a checkpoint
            # (safetensors) cannot hold twice
            self.model = T5EncoderModel(T5Config(vocab_size=BYTE_VOCAB, d_model=cfg.width, d_ff=4 * cfg.width,
                                                 num_layers=cfg.layers, num_heads=cfg.heads,
                                                 d_kv=cfg.width // cfg.heads, dropout_rate=0.0)).encoder
            self.frozen = None
        else:
            self.tokenizer, self.model = None, None
            # kept out of the module tree: not trained, not in the state dict, so not in any checkpoint
            object.__setattr__(self, "frozen", load_frozen(cfg.encoder))
        self.width = (self.model or self.frozen).config.d_model

    def __deepcopy__(self, memo):
        """A copy (train.py's EMA network) shares the frozen encoder: it is never trained, so a second copy would
        only take memory."""
        if self.frozen is not None:
            memo[id(self.frozen)] = self.frozen
        twin = self.__class__.__new__(self.__class__)
        memo[id(self)] = twin
        twin.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return twin

    def _apply(self, fn, *args, **kwargs):  # .to(device) and .float() reach the frozen encoder too
        super()._apply(fn, *args, **kwargs)
        if self.frozen is not None:
            self.frozen._apply(fn, *args, **kwargs)
        return self

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """In eval mode the result is detached and kept for the last few caption lists (sampling encodes the same
        captions, and the empty ones of classifier-free guidance, at every step), keyed on the weights' storage
        and version counters so that a weight changed in place (an EMA update, load_state_dict) is seen."""
        if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"text.py: captions must be a list of str, got {type(captions).__name__}")
        if self.training:
            return self.encode(captions)
        model = self.model if self.frozen is None else self.frozen
        key = (tuple(captions), *((p.data_ptr(), p.dtype, p._version) for p in model.parameters()))
        cache = self.__dict__.setdefault("_cache", {})  # outside the module tree: not state, not copied by _apply
        if key not in cache:
            if len(cache) >= 4:
                cache.clear()
            with torch.no_grad():
                cache[key] = self.encode(captions)
        return cache[key]

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder itself: captions -> (tokens (B, S_t, E), mask (B, S_t))."""
        model = self.model if self.frozen is None else self.frozen
        tokenizer = self.tokenizer if self.frozen is None else self.frozen.tokenizer
        device = next(model.parameters()).device
        enc = tokenizer(list(captions), padding=True, truncation=True, max_length=self.cfg.max_tokens,
                        return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)  # (B, S_t) each
        with torch.no_grad() if self.frozen is not None else contextlib.nullcontext():
            tokens = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, S_t, E)
        return tokens, mask.bool()


def masked_mean(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A caption's pooled encoding: the mean of its real tokens, tokens (B, S_t, E), keep (B, S_t) -> (B, E)."""
    return (tokens * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)


def load_frozen(name: str) -> nn.Module:
    """A T5-family encoder and its tokenizer from a Hub id or a folder (`transformers`), in eval mode, frozen;
    a one-line error for anything else."""
    from transformers import AutoConfig, AutoTokenizer, T5EncoderModel
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(f"text.py: cannot load the text encoder {name!r}: {str(e).splitlines()[0]}") from None
    if config.model_type not in ("t5", "mt5", "umt5"):
        raise ValueError(f"text.py: {name}: a {config.model_type!r} model; the text encoder must be T5-family")
    model = T5EncoderModel.from_pretrained(name).eval().requires_grad_(False)
    model.tokenizer = AutoTokenizer.from_pretrained(name)
    return model
