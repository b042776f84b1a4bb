"""The paper's timing protocol and a Jetson's state, with torch alone: bench/latency.py and
bench/latency_export.py share them, the latter on a Jetson TX2 too (Python 3.6, torch 1.10)."""
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections import namedtuple

import torch


NOT_A_JETSON = "--device jetson: this is not a Jetson (no /etc/nv_tegra_release); nothing measured"


def is_jetson() -> bool:
    return os.path.exists("/etc/nv_tegra_release")


def jetson_state() -> str:
    """The power mode and whether the clocks are fixed (jetson_clocks), as far as tools tell."""
    def ask(cmd):
        if shutil.which(cmd[0]) is None:
            return "{} not found".format(cmd[0])
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    return "power mode: {}; clocks: {}".format(ask(["nvpmodel", "-q"]), ask(["jetson_clocks", "--show"]))


def device_note(device: torch.device, jetson: bool = False) -> str:
    """What a benchmark's header says of the device it times on (a Jetson: its power mode and
    clocks) and, on a GPU, the cuDNN settings that change its times."""
    if device.type == "cuda":
        cudnn = torch.backends.cudnn
        settings = "cudnn.benchmark {}, TF32 convolutions {}".format(
            "on" if cudnn.benchmark else "off", "on" if cudnn.allow_tf32 else "off")
        return "{}; {}".format(jetson_state() if jetson else torch.cuda.get_device_name(device), settings)
    return "{}, {} threads".format(platform.processor() or platform.machine(), torch.get_num_threads())


# Milliseconds a pass: the paper's mean ± std, and the median, which a few slow passes (another
# process on the machine) do not move; and how many passes were timed.
Timing = namedtuple("Timing", "mean std median passes")


def synchronizer(device):
    """A function that waits for the work queued on `device` (that device's, not GPU 0's)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def timed(model, x, device, runs: int, warmup: int, max_seconds: float) -> Timing:
    """`runs` passes after `warmup`, fewer (at least 2 of each) where the timed passes would take
    more than max_seconds, or the warm-up more than half of it."""
    sync = synchronizer(device)
    with torch.no_grad():
        start = time.perf_counter()
        for done in range(1, warmup + 1):
            model(x)
            sync()
            if done >= 2 and time.perf_counter() - start > max_seconds / 2:
                break
        times = []
        start = time.perf_counter()
        while len(times) < runs and (len(times) < 2 or time.perf_counter() - start < max_seconds):
            begun = time.perf_counter()
            model(x)
            sync()
            times.append((time.perf_counter() - begun) * 1000)
    return Timing(statistics.mean(times), statistics.stdev(times), statistics.median(times), len(times))
