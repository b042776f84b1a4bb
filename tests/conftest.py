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
