"""checkpoint.py: atomic writes that keep the old file on failure and respect the umask; checkpoints that
carry their config, strict loads that name what does not fit, and one error type."""
import os
import re

import pytest
import torch

import checkpoint


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with checkpoint.atomic_path(target) as tmp:
            assert tmp.parent == target.parent  # same folder: os.replace is a rename
            tmp.write_bytes(b"half a fi")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []
    checkpoint.write_text(target, "new")
    assert target.read_text() == "new" and leftovers(tmp_path) == []


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        paths = [checkpoint.write_text(tmp_path / "a.json", "{}"),
                 checkpoint.save(tmp_path / "b.safetensors", {"w": torch.zeros(2)}, {"x": 1}),
                 checkpoint.torch_save({"step": 1}, tmp_path / "c.pt")]
    finally:
        os.umask(old)
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in paths), [oct(p.stat().st_mode) for p in paths]


def test_save_read_and_strict_load(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = checkpoint.save(tmp_path / "ckpt-00000001.safetensors",
                           {f"model.{k}": v for k, v in net.state_dict().items()}, {"net": {"in": 3}}, step=1)
    config, tensors = checkpoint.read(path)
    assert config == {"net": {"in": 3}}
    other = checkpoint.load_strict(torch.nn.Linear(3, 2), tensors, "model.", path)
    assert torch.equal(other.weight, net.weight)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"model.weight has shape \(2, 3\) where the network has \(2, 4\)"):
        checkpoint.load_strict(torch.nn.Linear(4, 2), tensors, "model.", path)
    with pytest.raises(checkpoint.CheckpointError, match=r"4 missing, e.g. \['0.bias', '0.weight'\]; 2 unexpected"):
        checkpoint.load_strict(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2)), tensors, "model.",
                               path)
    assert checkpoint.latest(tmp_path) == path and checkpoint.latest(tmp_path / "none") is None


def test_read_errors_are_one_line(tmp_path):
    (tmp_path / "text.safetensors").write_text("hello")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    for path, message in [(tmp_path / "none.safetensors", "no such cmmd checkpoint"),
                          (tmp_path, "a directory, not a cmmd checkpoint file"),
                          (tmp_path / "text.safetensors", "not a readable safetensors"),
                          (tmp_path / "plain.safetensors", "not a cmmd checkpoint (no 'cmmd' config")]:
        with pytest.raises(checkpoint.CheckpointError, match=re.escape(message)) as info:
            checkpoint.read(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_resolve_a_run_folder_gives_its_newest(tmp_path):
    for step in (5, 10):
        checkpoint.save(tmp_path / "run" / f"ckpt-{step:08d}.safetensors", {"w": torch.zeros(1)}, {"format": "cmmd-1"})
    path, how = checkpoint.resolve(str(tmp_path / "run"))
    assert path.name == "ckpt-00000010.safetensors" and "newest" in how
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="a folder with no checkpoint"):
        checkpoint.resolve(str(tmp_path / "empty"))
