import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nasfast.ops as ops
from nasfast.cli import resolve_device
from nasfast.decoder import Decoder
from nasfast.evaluate import evaluate_model
from nasfast.ops.memory import cpu_memory_cache, cpu_memory_cached, default_capacity
from nasfast.steps import descend, segmentation_loss

needs_ops = pytest.mark.skipif(not ops.available(), reason="native ops library not built")
MB = 2 ** 20
REPO = Path(__file__).resolve().parents[1]


def block(megabytes: float) -> torch.Tensor:
    return torch.empty(int(megabytes * MB) // 4)


def allocate_and_free(megabytes: float) -> None:
    block(megabytes)


@needs_ops
def test_a_freed_block_is_kept_and_handed_out_again_for_its_size():
    with cpu_memory_cache(capacity=64 * MB):
        x = block(8)
        address = x.data_ptr()
        del x
        assert cpu_memory_cached() == 8 * MB
        same_size = block(8)
        assert same_size.data_ptr() == address and cpu_memory_cached() == 0
        del same_size
        assert cpu_memory_cached() == 8 * MB
    assert cpu_memory_cached() == 0  # freed on leaving


@needs_ops
def test_sizes_that_do_not_recur_do_not_pile_up():
    """What is kept may raise the most memory in use at once by a quarter, no more: a size not kept
    first frees the oldest kept blocks."""
    with cpu_memory_cache(capacity=1024 * MB):
        a, b = block(8), block(12)  # 20 MB in use at once
        del a, b
        for megabytes in range(1, 40):  # sizes that never recur, as images of VOC's many sizes
            allocate_and_free(megabytes + 0.5)
            most_in_use = max(20, megabytes + 0.5)
            assert cpu_memory_cached() <= 1.25 * most_in_use * MB
        kept = cpu_memory_cached()
        newest = block(39.5)  # kept: the oldest went first
        assert cpu_memory_cached() == kept - newest.numel() * 4


@needs_ops
def test_small_blocks_are_left_to_malloc_and_the_capacity_bounds_what_is_kept():
    with cpu_memory_cache(capacity=10.0 * MB):  # a float too
        allocate_and_free(0.5)
        assert cpu_memory_cached() == 0
        a, b = block(8), block(8)
        del a, b
        assert cpu_memory_cached() == 8 * MB


@needs_ops
def test_leaving_an_inner_cache_frees_its_blocks_and_restores_the_outer_capacity():
    with cpu_memory_cache(capacity=64 * MB):
        with cpu_memory_cache(capacity=16 * MB):
            allocate_and_free(8)
            assert cpu_memory_cached() == 8 * MB
        assert cpu_memory_cached() == 0
        a, b = block(12), block(12)
        del a, b
        assert cpu_memory_cached() == 24 * MB  # 64 MB again, not 16
    with cpu_memory_cache(capacity=0):
        allocate_and_free(8)
        assert cpu_memory_cached() == 0


@needs_ops
def test_out_of_memory_frees_the_kept_blocks_before_it_gives_up():
    with cpu_memory_cache(capacity=64 * MB):
        allocate_and_free(8)
        with pytest.raises(RuntimeError, match="can't allocate memory"):
            torch.empty(2 ** 60, dtype=torch.uint8)
        assert cpu_memory_cached() == 0
        assert torch.empty(0).data_ptr() == 0  # as torch's own allocator


@needs_ops
def test_only_for_the_cpu_and_off_with_the_environment_variable(monkeypatch):
    with cpu_memory_cache("meta", capacity=64 * MB):
        allocate_and_free(8)
        assert cpu_memory_cached() == 0
    monkeypatch.setenv("NASFAST_CPU_CACHE_GB", "0")
    with cpu_memory_cache():
        allocate_and_free(8)
        assert cpu_memory_cached() == 0
    monkeypatch.setenv("NASFAST_CPU_CACHE_GB", "0.5")
    assert default_capacity() == 512 * MB
    monkeypatch.setenv("NASFAST_CPU_CACHE_GB", "1e12")  # more than the op's int64 takes: no limit
    with cpu_memory_cache():
        allocate_and_free(8)
        assert cpu_memory_cached() == 8 * MB


@pytest.mark.parametrize("value", ["-1", "lots", "nan", "inf", "1e999", ""])
def test_a_bad_environment_variable_is_refused_before_any_work(monkeypatch, value):
    monkeypatch.setenv("NASFAST_CPU_CACHE_GB", value)
    with pytest.raises(ValueError, match="NASFAST_CPU_CACHE_GB must be a number of GB >= 0"):
        resolve_device("cpu")


@needs_ops
def test_a_negative_capacity_is_refused_by_the_op():
    with pytest.raises(RuntimeError, match="capacity must be >= 0"):
        torch.ops.nasfast.set_cpu_memory_cache(-1)
    with cpu_memory_cache("cpu", capacity=2 ** 70):  # beyond int64: "all" (was a TypeError naming no value)
        assert torch.ops.nasfast.set_cpu_memory_cache(0) == 2 ** 62


@needs_ops
def test_a_mkldnn_buffer_made_before_the_allocator_was_installed_is_freed_as_torch_frees_it():
    """oneDNN frees through the CPU allocator of the moment: ours gets blocks torch's made (found by a
    review: the process aborted). In a fresh process, as the allocator is installed once per process."""
    script = ("import torch, nasfast.ops\n"
              "x = torch.randn(4, 64, 128, 128).to_mkldnn()\n"
              "with nasfast.ops.cpu_memory_cache(capacity=1 << 30):\n"
              "    pass\n"
              "del x\n"
              "print('freed')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0 and result.stdout == "freed\n", result.stderr


def _training_run(cache: bool):
    """Three steps of a decoder (mkldnn convolutions free through the allocator's raw deleter):
    the losses, the weights after, and the bytes kept after the first step."""
    torch.manual_seed(0)
    decoder = Decoder("arch0", channels=32, num_classes=11)
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    features = [torch.randn(4, c, 64 // s, 64 // s, generator=g) for c, s in zip((24, 32, 96, 320), (1, 2, 4, 8))]
    labels = torch.randint(0, 11, (4, 256, 256), generator=g)
    losses, kept = [], []
    with cpu_memory_cache(capacity=(1 << 30) if cache else 0):
        for _ in range(3):
            logits, aux = decoder.forward_with_aux(features)
            loss = segmentation_loss(logits, aux, labels, 255, 0.15)
            descend(loss, optimizer)
            losses.append(loss.item())
            kept.append(cpu_memory_cached())
    return losses, decoder.state_dict(), kept[0]


@needs_ops
def test_training_with_the_cache_is_bit_identical():
    losses, weights, kept = _training_run(cache=True)
    assert kept > 16 * MB  # the step's activations were kept, and reused after
    reference_losses, reference_weights, _ = _training_run(cache=False)
    assert losses == reference_losses
    for name, value in reference_weights.items():
        assert torch.equal(weights[name], value), name


@needs_ops
def test_a_forked_child_neither_inherits_the_kept_blocks_nor_keeps_its_own():
    with cpu_memory_cache(capacity=64 * MB):
        allocate_and_free(8)
        assert cpu_memory_cached() == 8 * MB
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: allocate and free, report what is kept
            try:
                after_fork = cpu_memory_cached()
                allocate_and_free(8)
                os.write(write, f"{after_fork} {cpu_memory_cached()}".encode())
            finally:
                os._exit(0)
        os.close(write)
        ready, _, _ = select.select([read], [], [], 60)
        assert ready, "the forked child hung"
        report = os.read(read, 100).decode()
        os.close(read)
        os.waitpid(pid, 0)
        assert report == "0 0"
        assert cpu_memory_cached() == 8 * MB  # the parent's are still kept


@needs_ops
def test_evaluation_keeps_freed_memory_between_batches_and_frees_it_after():
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, images):
            seen.append(cpu_memory_cached())
            return images.repeat(1, 2, 1, 1)  # 2 classes, 4 MiB of logits

    batches = [(torch.randn(8, 1, 256, 256), torch.randint(0, 2, (8, 256, 256))) for _ in range(3)]
    metrics = evaluate_model(Recording(), batches, 2, 255, torch.device("cpu"))
    assert 0 <= metrics["miou"] <= 1
    assert seen[0] == 0 and min(seen[1:]) >= 4 * MB
    assert cpu_memory_cached() == 0
