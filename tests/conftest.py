import contextlib
import os
import resource
import signal
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NASFAST_DATA", str(REPO.parent / "shared" / "data"))
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background (`pytest &`): the Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # tests need it, here and in their processes


# A test's `device` parameter: the CPU, and CUDA where there is a GPU (marked, run on the GPU machine).
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


@contextlib.contextmanager
def file_size_limit(size: int):
    """ulimit -f: a write past `size` bytes fails with EFBIG (Python ignores SIGXFSZ), a real way to
    meet a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    root = Path(os.environ["NASFAST_DATA"]) / "camvid"
    if not (root / "train.txt").exists():
        message = f"CamVid not found at {root} (set NASFAST_DATA)"
        if os.environ.get("NASFAST_REQUIRE_DATA") == "1":
            pytest.fail(message + " (NASFAST_REQUIRE_DATA=1)")
        pytest.skip(message)
    return root


@pytest.fixture(autouse=True)
def seeded_torch():
    """Each test draws the same random numbers whichever tests ran before it (a tolerance that one
    draw in hundreds exceeds must not fail after an unrelated change)."""
    import torch

    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Code under test may call torch.set_num_threads (nasfast.search.distributed.configure_threads
    does): the tests after it must not run on another thread count."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def exact_float32():
    """cuDNN convolutions default to TF32 on Ampere and newer GPUs (about 1e-3 relative error); a
    reference to compare against must be plain float32."""
    import torch

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def has_tensorboard() -> bool:
    import importlib.util
    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_scalars(directory: Path) -> dict:
    """{tag: [(step, value), ...]} of the TensorBoard event files in `directory`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
