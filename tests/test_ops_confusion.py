"""The native streaming confusion-matrix op against the reference (upsample, argmax, bincount)."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DEVICES
import nasfast.ops as ops
from nasfast.ops import confusion_matrix_update, confusion_matrix_update_reference

needs_ops = pytest.mark.skipif(not ops.available(), reason="native ops library not built")
SIZES = [((9, 12), (36, 48)), ((12, 15), (45, 60)), ((7, 9), (7, 9)), ((5, 3), (13, 17)), ((1, 1), (4, 5)),
         ((16, 16), (8, 8))]  # (logits, labels): integer, non-integer and odd scales, equal, 1x1, downsampling


def both(scores, target, k, ignore=255, device="cpu"):
    fused, reference = (torch.zeros(k, k, dtype=torch.long, device=device) for _ in range(2))
    torch.ops.nasfast.confusion_matrix_update_(fused, scores, target, ignore)
    confusion_matrix_update_reference(reference, scores, target, ignore)
    return fused, reference


@needs_ops
@pytest.mark.parametrize("low, high", SIZES)
def test_logits_match_reference_exactly_in_float64(low, high):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 7, *low, generator=g, dtype=torch.float64)
    target = torch.randint(0, 7, (2, *high), generator=g)
    target[:, 0] = 255
    fused, reference = both(logits, target, 7)
    assert torch.equal(fused, reference) and fused.sum() == (target != 255).sum()


@needs_ops
def test_float32_non_contiguous_logits_and_predictions():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 21, 40, 30, generator=g).transpose(2, 3)  # non-contiguous, 30 x 40
    target = torch.randint(0, 21, (3, 120, 160), generator=g)
    fused, reference = both(logits, target, 21)
    assert (fused - reference).abs().sum() <= 2  # float32 rounding may flip a near-tie
    pred = torch.randint(0, 21, (3, 120, 160), generator=g)
    for p, t in [(pred, target), (pred.int(), target.to(torch.uint8)), (pred.transpose(1, 2), target.transpose(1, 2))]:
        fused, reference = both(p, t, 21)
        assert torch.equal(fused, reference)


@needs_ops
@pytest.mark.parametrize("low, high", [((6, 7), (6, 7)), ((6, 7), (18, 21)), ((6, 7), (11, 13))])
def test_ties_go_to_the_first_class_as_torch_argmax(low, high):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 5, *low, generator=g, dtype=torch.float64)
    logits[:, 1] += 20
    logits[:, 3] = logits[:, 1]  # classes 1 and 3 tie everywhere, above the others
    logits[:, 4] = logits[:, 1]
    target = torch.randint(0, 5, (2, *high), generator=g)
    fused, reference = both(logits, target, 5)
    assert fused[:, 1].sum() == target.numel() and fused[:, 3:].sum() == 0
    if low == high:
        assert torch.equal(fused, reference)
    # When upsampling, F.interpolate's vectorised CPU kernel may round identical channels
    # differently, so the reference can split a tie; the fused op interpolates every class alike.


@needs_ops
def test_infinite_and_nan_logits_at_label_size_follow_torch_argmax():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(1, 4, 5, 6, generator=g, dtype=torch.float64)
    logits[0, 2, 1, 1] = float("inf")
    logits[0, 3, 1, 2] = float("inf")
    logits[0, 1, 3, 3] = float("nan")
    target = torch.randint(0, 4, (1, 5, 6), generator=g)
    fused, reference = both(logits, target, 4)
    assert torch.equal(fused, reference)


@needs_ops
def test_nan_logits_when_upsampling_count_as_the_largest():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(1, 4, 5, 6, generator=g, dtype=torch.float64)
    logits[0, 3, 1, 1] = float("nan")  # every label pixel that interpolates it predicts class 3 ...
    logits[0, 1, 1, 2] = float("nan")  # ... unless it also reads this one: class 1 comes first
    target = torch.randint(0, 4, (1, 15, 17), generator=g)
    fused, reference = both(logits, target, 4)
    assert torch.equal(fused, reference) and fused[:, 1].sum() > 0 and fused[:, 3].sum() > 0


@needs_ops
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_on_the_cpu_run_the_reference(dtype):
    """The CPU kernels take float32 and float64 logits; the wrapper gave them these and raised."""
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 5, 6, 7, generator=g).to(dtype), torch.randint(0, 5, (2, 12, 14), generator=g)
    fused, reference = (torch.zeros(5, 5, dtype=torch.long) for _ in range(2))
    confusion_matrix_update(fused, logits, target, 255)
    confusion_matrix_update_reference(reference, logits, target, 255)
    assert torch.equal(fused, reference) and fused.sum() == target.numel()


@needs_ops
def test_ignore_index_and_an_all_ignored_batch():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[0] = 7
    fused, reference = both(logits, target, 3, ignore=7)
    assert torch.equal(fused, reference) and fused.sum() == 64
    fused, _ = both(logits, torch.full((2, 8, 8), 7), 3, ignore=7)
    assert fused.sum() == 0


@needs_ops
def test_updates_accumulate_in_place():
    g = torch.Generator().manual_seed(8)
    matrix = torch.zeros(4, 4, dtype=torch.long)
    reference = torch.zeros(4, 4, dtype=torch.long)
    for _ in range(3):
        logits, target = torch.randn(1, 4, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (1, 9, 9))
        confusion_matrix_update(matrix, logits, target, 255)
        confusion_matrix_update_reference(reference, logits, target, 255)
    assert torch.equal(matrix, reference) and matrix.sum() == 3 * 81



@needs_ops
@pytest.mark.parametrize("device", DEVICES)
def test_op_checks(device):
    matrix = torch.zeros(5, 5, dtype=torch.long, device=device)
    logits = torch.randn(1, 5, 4, 4, device=device)
    target = torch.randint(0, 5, (1, 8, 8), device=device)
    target[0, 0, 0] = 255
    torch.library.opcheck(torch.ops.nasfast.confusion_matrix_update_.default, (matrix, logits, target, 255))
    torch.library.opcheck(torch.ops.nasfast.confusion_matrix_update_.default,
                          (matrix, torch.randint(0, 5, (1, 8, 8), device=device), target, 255))
    out_of_range = torch.randint(0, 5, (1, 8, 8), device=device)
    out_of_range[0, 0, 0] = 7  # where the target is ignored: not an error
    torch.ops.nasfast.confusion_matrix_update_(matrix, out_of_range, target, 255)
    out_of_range[0, 0, 1] = 7
    before = matrix.clone()
    bad = [((matrix, logits, target + 5, 255), "target values"),
           ((matrix, logits, torch.where(target == 255, -1, target), 255), "target values"),
           ((matrix, torch.randn(1, 4, 4, 4, device=device), target, 255), "K = 5"),
           ((matrix, out_of_range, target, 255), "predictions must be"),
           ((matrix, torch.randint(0, 5, (1, 8, 7), device=device), target, 255), "differ in shape"),
           ((matrix.int(), logits, target, 255), "int64"),
           ((matrix, logits, target[0], 255), "N x H x W"),
           ((matrix, logits, target + 0.5, 255), "target must be integer"),  # was truncated and counted
           ((matrix[0, 0], logits, target, 255), "K x K int64")]  # was an IndexError that named no argument
    for args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.nasfast.confusion_matrix_update_(*args)
    assert torch.equal(matrix, before)  # a refused update changes nothing
    with pytest.raises(ValueError, match="target values"):  # the Python entry point's error type
        confusion_matrix_update(matrix, logits, target + 5, 255)
    for args, message in bad[2:]:  # the reference refuses as the op does (it counted 3 classes into 5, say)
        with pytest.raises(ValueError, match=message):
            confusion_matrix_update_reference(*args)
        with pytest.raises(ValueError, match=message):
            confusion_matrix_update(*args)
    assert torch.equal(matrix, before)


@needs_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, k", [(torch.uint8, 300), (torch.int8, 200)])
def test_narrow_predictions_of_more_classes_than_their_type_holds(device, dtype, k):
    """Predictions are checked against K as int64: in their own type K would wrap (uint8: 300 -> 44)."""
    g = torch.Generator().manual_seed(6)
    pred = torch.randint(0, torch.iinfo(dtype).max + 1, (2, 9, 11), generator=g).to(dtype)
    target = torch.randint(0, k, (2, 9, 11), generator=g)
    fused, reference = both(pred.to(device), target.to(device), k, ignore=-1, device=device)  # 255 is a class
    assert torch.equal(fused, reference) and fused.sum() == target.numel()


@needs_ops
def test_real_camvid_labels_with_upsampled_logits(camvid_root):
    names = [line.split()[1] for line in (camvid_root / "val.txt").read_text().split("\n")[:3]]
    target = torch.from_numpy(np.stack([np.array(Image.open(camvid_root / n)) for n in names])).long()
    target[target == 11] = 255
    logits = torch.randn(3, 11, 45, 60, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    fused, reference = both(logits, target, 11)
    assert torch.equal(fused, reference) and fused.sum() == (target != 255).sum()


@needs_ops
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# 110 classes: the largest matrix that fits shared memory (48 KB of counts), 111 and 150: too large
@pytest.mark.parametrize("k", [5, 21, 110, 111, 150])
@pytest.mark.parametrize("low, high", SIZES + [((20, 64), (40, 128))])  # 150 x 64 doubles: too many to stage
def test_cuda_matches_reference(k, low, high):
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(2, k, *low, generator=g, dtype=torch.float64).cuda()
    target = torch.randint(0, k, (2, *high), generator=g).cuda()
    target[:, 0] = 255
    fused, reference = both(logits, target, k, device="cuda")
    assert torch.equal(fused, reference)
    fused, reference = both(logits.float(), target, k, device="cuda")
    assert (fused - reference).abs().sum() <= 0.001 * target.numel()  # float32: a rare near-tie may flip
    fused, reference = both(logits.half(), target, k, device="cuda")
    assert (fused - reference).abs().sum() <= 0.02 * target.numel()  # half logits: near-ties may flip
    pred = torch.randint(0, k, (2, *high), generator=g).cuda()
    fused, reference = both(pred, target, k, device="cuda")
    assert torch.equal(fused, reference)
