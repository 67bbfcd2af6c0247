"""The model registry (models.py): every family goes from a run's flags to a config to a network and back, and
a new family is one entry: pipeline.py, train.py's choices and the sampler take it without another change."""
import dataclasses

import pytest
import torch

import models
import pipeline
import sampling
import train


def tiny_run(model: str, **kw) -> train.TrainConfig:
    return train.TrainConfig(model=model, preset="tiny", vae="pixel", frames=4, size=16, **kw)


# MM-LDM's two families are built in tests/test_mmldm_runs.py: the autoencoder's forward is its loss, and the
# generator needs a trained autoencoder's checkpoint
@pytest.mark.parametrize("name", [m for m in models.MODELS if not m.startswith("mmldm")])
def test_every_family_builds_from_its_config(name):
    fam = models.MODELS[name]
    meta = pipeline.run_config(tiny_run(name))
    pipe = pipeline.build(meta)
    assert isinstance(pipe.net, fam.network) and meta["codec"]["audio"] == fam.audio_codec
    assert pipe.sampler().guidance_form == fam.sampler.get("guidance_form", "cmmd")
    assert dataclasses.asdict(fam.config(**meta["net"])) == meta["net"]
    shapes = pipe.shapes(1, 4)
    out = pipe.net({k: torch.zeros(s) for k, s in shapes.items()}, torch.zeros(1, dtype=torch.long))
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes


def test_train_choices_come_from_the_registry():
    fields = train.TrainConfig.__dataclass_fields__
    assert fields["model"].metadata["choices"] == list(models.MODELS)
    assert set(fields["preset"].metadata["choices"]) == {p for f in models.MODELS.values() for p in f.presets}
    with pytest.raises(ValueError, match="choose one of cmmd, mmdiffusion, dit"):
        pipeline.run_config(tiny_run("nope"))


class Echo(torch.nn.Module):
    """A stand-in family: one learnt scale per modality."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.scale = cfg, torch.nn.Parameter(torch.full((2,), cfg.start))

    def forward(self, x, n):
        return {k: x[k] * self.scale[i] for i, k in enumerate(x)}


@dataclasses.dataclass
class EchoConfig:
    start: float = 0.5


def test_a_new_family_is_one_entry(monkeypatch):
    fam = models.Family("a stand-in", EchoConfig, Echo, ("tiny",), lambda name, **kw: EchoConfig(**kw),
                        lambda cfg, clip: dataclasses.asdict(EchoConfig()))
    monkeypatch.setitem(models.MODELS, "echo", fam)
    pipe = pipeline.build(pipeline.run_config(tiny_run("echo")))
    assert isinstance(pipe.net, Echo) and fam.build("tiny", start=2.0).scale.tolist() == [2.0, 2.0]
    shapes = pipe.shapes(1, 4)
    out = sampling.sample(pipe.diffusion, pipe.net, shapes, pipe.sampler(steps=3),
                          generator=torch.Generator().manual_seed(0), progress=False)
    assert {k: tuple(v.shape) for k, v in out.items()} == shapes
