import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nasfast.metrics import ConfusionMatrix


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


def test_logits_are_upsampled_to_the_label_size_and_argmaxed():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 9, 12, generator=g)
    target = torch.randint(0, 4, (2, 36, 48), generator=g)
    m = ConfusionMatrix(4)
    m.update(logits, target)
    pred = F.interpolate(logits, size=(36, 48), mode="bilinear", align_corners=False).argmax(1)
    check(m.compute(), numpy_metrics(pred, target, 4))


def test_real_camvid_labels(camvid_root):
    names = [line.split()[1] for line in (camvid_root / "val.txt").read_text().split("\n")[:4]]
    labels = [np.array(Image.open(camvid_root / n)) for n in names]
    targets = [np.where(l == 11, 255, l).astype(np.int64) for l in labels]
    preds = [np.roll(t, 7, axis=1) % 11 for t in targets]  # a plausible, imperfect prediction
    m = ConfusionMatrix(11)
    for p, t in zip(preds, targets):
        m.update(torch.from_numpy(p)[None], torch.from_numpy(t)[None])
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


def test_bad_inputs_are_rejected():
    m = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target values"):
        m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="classes"):
        m.update(torch.randn(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="exclude"):
        ConfusionMatrix(3, exclude=(3,))


# The native streaming op against the reference (upsample, argmax, bincount).
import nasfast.ops as ops  # noqa: E402
from nasfast.ops import confusion_matrix_update_reference  # noqa: E402

needs_ops = pytest.mark.skipif(not ops.available(), reason="native ops library not built")
SIZES = [((9, 12), (36, 48)), ((12, 15), (45, 60)), ((7, 9), (7, 9)), ((5, 3), (13, 17)), ((1, 1), (4, 5))]


def both(scores, target, k, ignore=255):
    fused, reference = torch.zeros(k, k, dtype=torch.long), torch.zeros(k, k, dtype=torch.long)
    torch.ops.nasfast.confusion_matrix_update_(fused, scores, target, ignore)
    confusion_matrix_update_reference(reference, scores, target, ignore)
    return fused, reference


@needs_ops
@pytest.mark.parametrize("low, high", SIZES)
def test_fused_logits_match_reference_exactly_in_float64(low, high):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 7, *low, generator=g, dtype=torch.float64)
    target = torch.randint(0, 7, (2, *high), generator=g)
    target[:, 0] = 255
    fused, reference = both(logits, target, 7)
    assert torch.equal(fused, reference) and fused.sum() == (target != 255).sum()


@needs_ops
def test_fused_float32_non_contiguous_and_predictions():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 21, 40, 30, generator=g).transpose(2, 3)  # non-contiguous, 30 x 40
    target = torch.randint(0, 21, (3, 120, 160), generator=g)
    fused, reference = both(logits, target, 21)
    assert (fused - reference).abs().sum() <= 2  # float32 rounding may flip a near-tie
    pred = torch.randint(0, 21, (3, 120, 160), generator=g)
    fused, reference = both(pred, target, 21)
    assert torch.equal(fused, reference)


@needs_ops
def test_fused_op_checks():
    matrix = torch.zeros(5, 5, dtype=torch.long)
    logits, target = torch.randn(1, 5, 4, 4), torch.randint(0, 5, (1, 8, 8))
    torch.library.opcheck(torch.ops.nasfast.confusion_matrix_update_.default, (matrix, logits, target, 255))
    with pytest.raises(RuntimeError, match="target values"):
        torch.ops.nasfast.confusion_matrix_update_(matrix, logits, target + 5, 255)
    with pytest.raises(RuntimeError, match="K = 5"):
        torch.ops.nasfast.confusion_matrix_update_(matrix, torch.randn(1, 4, 4, 4), target, 255)


@needs_ops
def test_metric_fused_or_not_gives_the_same_reward_on_camvid_labels(camvid_root):
    names = [line.split()[1] for line in (camvid_root / "val.txt").read_text().split("\n")[:3]]
    target = torch.from_numpy(np.stack([np.array(Image.open(camvid_root / n)) for n in names])).long()
    target[target == 11] = 255
    logits = torch.randn(3, 11, 45, 60, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    results = []
    for fused in (None, False):
        m = ConfusionMatrix(11, fused=fused)
        m.update(logits, target)
        results.append(m.compute()["reward"])
    assert results[0] == results[1]
