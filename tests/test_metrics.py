import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nasfast.metrics import ConfusionMatrix, NonFiniteScores, metrics_of


def numpy_metrics(pred, target, k, ignore=255, exclude=()):
    """An independent computation of SPEC section 5, pixel by pixel."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    keep = target != ignore
    pred, target = pred[keep], target[keep]
    ious, accs, weights = {}, {}, {}
    for c in range(k):
        tp = np.sum((pred == c) & (target == c))
        fp = np.sum((pred == c) & (target != c))
        fn = np.sum((pred != c) & (target == c))
        if tp + fp + fn:
            ious[c] = tp / (tp + fp + fn)
        if tp + fn:
            accs[c] = tp / (tp + fn)
        weights[c] = tp + fn
    used = [c for c in range(k) if c not in exclude]
    miou = np.mean([ious[c] for c in used if c in ious])
    macc = np.mean([accs[c] for c in used if c in accs])
    fwiou = sum(weights[c] * ious.get(c, 0) for c in used) / sum(weights[c] for c in used)
    return miou, fwiou, macc, np.mean(pred == target), (miou * fwiou * macc) ** (1 / 3)


def check(result, expected):
    names = ["miou", "fwiou", "mean_acc", "pixel_acc", "reward"]
    for name, value in zip(names, expected):
        assert result[name] == pytest.approx(value, rel=1e-12), name


@pytest.mark.parametrize("exclude", [(), (0,), (0, 3)])
def test_random_predictions_match_numpy(exclude):
    g = torch.Generator().manual_seed(1)
    pred = torch.randint(0, 6, (3, 17, 23), generator=g)
    target = torch.randint(0, 6, (3, 17, 23), generator=g)
    target[target == 5] = 255  # class 5 only predicted, never labelled
    target[0, :4] = 255
    m = ConfusionMatrix(6, exclude=exclude)
    for i in range(3):  # streaming: three updates
        m.update(pred[i:i + 1], target[i:i + 1])
    check(m.compute(), numpy_metrics(pred, target, 6, exclude=exclude))


def test_real_camvid_labels(camvid_root):
    names = [line.split()[1] for line in (camvid_root / "val.txt").read_text().split("\n")[:4]]
    labels = [np.array(Image.open(camvid_root / n)) for n in names]
    targets = [np.where(l == 11, 255, l).astype(np.int64) for l in labels]
    preds = [np.roll(t, 7, axis=1) % 11 for t in targets]  # a plausible, imperfect prediction
    m = ConfusionMatrix(11)
    for p, t in zip(preds, targets):
        m.update(p, t)  # numpy arrays, H x W
    check(m.compute(), numpy_metrics(np.stack(preds), np.stack(targets), 11))
    assert m.matrix.sum() == sum((t != 255).sum() for t in targets)


def test_perfect_prediction_scores_one_and_reset():
    target = torch.tensor([[0, 1, 2, 255]])
    m = ConfusionMatrix(4)
    m.update(target.clamp(max=3), target)
    result = m.compute()
    assert result["reward"] == 1.0 and math.isnan(result["iou"][3])  # class 3: undefined
    m.reset()
    assert m.matrix.sum() == 0 and math.isnan(m.compute()["reward"])


def test_non_finite_scores_are_refused_not_scored_as_class_0():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    batches = [(torch.ones(2, 3, 4, 4), labels)] * 3
    assert metrics_of(lambda x: x, batches, 3)["pixel_acc"] == 1.0
    for bad in (float("nan"), float("inf")):
        def diverged(x, calls=[]):
            calls.append(1)
            return x * bad if len(calls) > 1 else x  # the last two batches
        with pytest.raises(NonFiniteScores, match="NaN or infinite in 2 batches of 3: its weights have diverged"):
            metrics_of(diverged, batches, 3)


def test_bad_inputs_are_rejected():
    m = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target values"):
        m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="classes"):
        m.update(torch.randn(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="exclude"):
        ConfusionMatrix(3, exclude=(3,))
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 2.5"):
        ConfusionMatrix(2.5)
    with pytest.raises(TypeError, match=r"ignore_index must be an int, the label value not counted \(255 by default\), "
                                        r"got None"):
        ConfusionMatrix(3, ignore_index=None)  # at once, not at the first update
    assert ConfusionMatrix(3, exclude=0).exclude == (0,) and ConfusionMatrix(np.int64(3)).num_classes == 3
    for exclude in (None, "ab", [1.5], [True]):  # nothing, characters, a float, a bool: once accepted, or a TypeError
        with pytest.raises(TypeError, match="exclude must be a class index or a sequence of them"):
            ConfusionMatrix(3, exclude=exclude)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got True"):
        ConfusionMatrix(True)
    assert ConfusionMatrix(3, exclude=[np.int64(2)]).exclude == (2,)


@pytest.mark.parametrize("fused", [None, False])
def test_an_ignore_index_among_the_classes_leaves_that_class_out_of_the_averages(fused):
    """Its pixels are never counted, so it could score no hit: it gave IoU 0 wherever predicted."""
    pred, target = torch.tensor([[0, 1, 2, 3, 1]]), torch.tensor([[1, 1, 2, 3, 0]])
    void = ConfusionMatrix(4, ignore_index=0, fused=fused)
    void.update(pred, target)
    assert void.exclude == (0,) and void.compute()["miou"] == pytest.approx((0.5 + 1 + 1) / 3)
    check(void.compute(), numpy_metrics(pred, target, 4, ignore=0, exclude=(0,)))
    assert ConfusionMatrix(4, ignore_index=0, exclude=(0, 2)).exclude == (0, 2)


@pytest.mark.parametrize("scores, target, message", [
    (torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2),
     r"targets must be integer N x H x W \(or H x W\), got torch.float32 \(1, 2, 2\)"),
    (torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 1, 2, 2, dtype=torch.long),
     r"targets must be integer N x H x W \(or H x W\), got torch.int64 \(1, 1, 2, 2\)"),
    (torch.randn(2, 3, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long),
     r"logits \(2, 3, 2, 2\) and targets \(1, 4, 4\) differ in batch"),
    (torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 3, 2, dtype=torch.long),
     r"predictions \(1, 2, 3\) and targets \(1, 3, 2\) differ in shape"),
    (torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, 2, dtype=torch.long),
     r"predictions \(1, 2, 2\) and targets \(2, 2, 2\) differ in shape"),  # H x W predictions: one image
])
def test_update_refuses_targets_and_scores_that_do_not_match_before_counting(scores, target, message):
    m = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=f"^{message}$"):
        m.update(scores, target)
    assert m.matrix.sum() == 0


@pytest.mark.parametrize("fused", [None, False])
def test_an_empty_target_counts_nothing(fused):
    m = ConfusionMatrix(3, fused=fused)
    m.update(torch.randn(1, 3, 4, 4), torch.zeros(1, 0, 4, dtype=torch.long))
    assert m.matrix.sum() == 0


@pytest.mark.parametrize("fused", [None, False])
def test_uint8_targets_compare_with_the_ignore_index_as_integers(fused):
    """255 in a uint8 target is not the ignore index -1 (uint8 arithmetic would make it so)."""
    m = ConfusionMatrix(2, ignore_index=-1, fused=fused)
    with pytest.raises(ValueError, match=r"target values must be in \[0, 2\) or -1"):
        m.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 255]], dtype=torch.uint8))


def test_classes_absent_or_only_predicted_are_handled_as_spec_says():
    # class 2: never labelled nor predicted (skipped everywhere); class 3: predicted, never labelled
    # (IoU 0 counts in mIoU, no accuracy); class 1: labelled, never predicted (IoU 0, accuracy 0).
    target = torch.tensor([[0, 0, 1, 1, 0, 255]])
    pred = torch.tensor([[0, 0, 0, 3, 0, 2]])
    m = ConfusionMatrix(4)
    m.update(pred, target)
    result = m.compute()
    assert math.isnan(result["iou"][2]) and result["iou"][3] == 0 and math.isnan(result["acc"][3])
    assert result["miou"] == pytest.approx((3 / 4 + 0 + 0) / 3)  # class 0: TP 3, FP 1
    assert result["mean_acc"] == pytest.approx((1 + 0) / 2)
    assert result["fwiou"] == pytest.approx((3 * 3 / 4 + 2 * 0) / 5)
    check(result, numpy_metrics(pred, target, 4))


def test_excluded_classes_leave_the_averages_but_not_the_per_class_values():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randint(0, 5, (2, 30, 30), generator=g), torch.randint(0, 5, (2, 30, 30), generator=g)
    full, without_background = ConfusionMatrix(5), ConfusionMatrix(5, exclude=(0,))
    for m in (full, without_background):
        m.update(pred, target)
    a, b = full.compute(), without_background.compute()
    assert a["iou"] == b["iou"] and a["pixel_acc"] == b["pixel_acc"]
    assert a["miou"] != b["miou"] and b["miou"] == pytest.approx(sum(a["iou"][1:]) / 4)
    check(b, numpy_metrics(pred, target, 5, exclude=(0,)))


def test_single_images_and_custom_ignore_index():
    target = torch.tensor([[0, 1], [9, 1]])
    m = ConfusionMatrix(2, ignore_index=9)
    m.update(torch.tensor([[0, 1], [1, 0]]), target)  # H x W, no batch dimension
    assert m.matrix.tolist() == [[1, 0], [1, 1]]


@pytest.mark.parametrize("fused", [None, False])
def test_logits_are_upsampled_to_the_label_size_and_argmaxed_fused_or_not(fused):
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 6, 10, 13, generator=g, dtype=torch.float64)
    target = torch.randint(0, 6, (2, 40, 52), generator=g)
    m = ConfusionMatrix(6, fused=fused)
    m.update(logits, target)
    pred = F.interpolate(logits, size=(40, 52), mode="bilinear", align_corners=False).argmax(1)
    expected = torch.bincount((target * 6 + pred).flatten(), minlength=36).view(6, 6)
    assert torch.equal(m.matrix, expected) and m.matrix.dtype == torch.int64


@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_on_the_cpu_count_as_in_float32(fused, dtype):
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(2, 6, 10, 13, generator=g).to(dtype)
    target = torch.randint(0, 6, (2, 40, 52), generator=g)
    half, single = ConfusionMatrix(6, fused=fused), ConfusionMatrix(6, fused=fused)
    half.update(logits, target)
    single.update(logits.float(), target)
    assert torch.equal(half.matrix, single.matrix)


def test_all_reduce_without_and_with_a_process_group(tmp_path):
    import torch.distributed as dist
    m = ConfusionMatrix(3)
    m.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
    before = m.matrix.clone()
    m.all_reduce()  # no process group: nothing happens
    assert torch.equal(m.matrix, before)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        m.all_reduce()  # one process: the sum is the matrix itself
        assert torch.equal(m.matrix, before)
    finally:
        dist.destroy_process_group()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_all_reduce_under_nccl_of_a_process_that_had_no_batch(tmp_path):
    """Its matrix was still on the CPU, which NCCL refuses."""
    import torch.distributed as dist
    m = ConfusionMatrix(3)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        m.all_reduce()
        assert m.matrix.is_cuda and m.matrix.sum() == 0
    finally:
        dist.destroy_process_group()
