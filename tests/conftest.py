"""Shared test helpers: where ../shared lives, and skips with a reason when it is absent."""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("CMMD_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"
I3D_DIR = SHARED / "weights" / "i3d-kinetics400"


def shared_file(path: Path) -> Path:
    """Return `path`, or skip the calling test naming the missing file."""
    if not path.exists():
        pytest.skip(f"needs {path} (from ../shared), which is absent")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny
    models gain nothing from a second thread, and on a shared 2-core machine OpenMP threads waiting on each
    other turn a 60 ms forward into seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
