import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NASFAST_DATA", str(REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    root = Path(os.environ["NASFAST_DATA"]) / "camvid"
    if not (root / "train.txt").exists():
        pytest.skip(f"CamVid not found at {root} (set NASFAST_DATA)")
    return root


@pytest.fixture
def exact_float32():
    """cuDNN convolutions default to TF32 on Ampere and newer GPUs (about 1e-3 relative error); a
    reference to compare against must be plain float32."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
