"""The searched decoder and its auxiliary heads (SPEC section 3)."""
import numbers
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .cell import Cell
from .genotype import Genotype
from .cell_operations import ConvBNReLU
from .ops import UpsampleAdd
from .ops.upsample_add import upsampled

AUX_KINDS = ("cell", "classifier", None)


class Block(nn.Module):
    """Two inputs, each through its own cell and conv 1x1; the coarser one is upsampled and added."""

    def __init__(self, genotype, channels: int, sep_repeats: int, fused, first_is_finer: bool):
        super().__init__()
        self.cell_a = Cell(genotype, channels, sep_repeats, fused)
        self.cell_b = Cell(genotype, channels, sep_repeats, fused)
        self.project_a = ConvBNReLU(channels, channels, 1)
        self.project_b = ConvBNReLU(channels, channels, 1)
        self.merge = UpsampleAdd(fused)
        self.first_is_finer = first_is_finer

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        a = self.project_a(self.cell_a(a))
        b = self.project_b(self.cell_b(b))
        if self.first_is_finer:
            return self.merge(a, b)
        return self.merge(b, a)


class AuxHead(nn.Module):
    """Training-only intermediate supervision: [auxiliary cell ->] conv 3x3 -> classes."""

    def __init__(self, genotype, channels: int, num_classes: int, sep_repeats: int, with_cell: bool, fused):
        super().__init__()
        self.cell = Cell(genotype, channels, sep_repeats, fused) if with_cell else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.cell(x))


class Decoder(nn.Module):
    """Builds the decoder a genotype describes on top of encoder feature maps.

    genotype: a Genotype, a zoo name ("arch0"), the paper's nested list or its JSON text.
    in_channels, in_strides: channels and strides of the 4 encoder outputs it reads (MobileNet-v2's
        by default). num_classes: output channels. channels, sep_repeats: the decoder's width and
        the repeats of each separable block (the search's defaults, 48 and 1; a trained model
        uses 64 and 2, as nasfast.create_model builds it). aux: "cell" (auxiliary cells, as in
        the search and training), "classifier" (a conv only) or None.
    fused: None uses the native ops when they are loaded; decided here, once.

    `forward(features)` takes the list of the 4 feature maps (N x in_channels[i] x H_i x W_i) and
    returns the logits at `output_stride`; `forward_with_aux(features)` also returns one
    auxiliary output per block (empty when `aux` is None), for training. A design may leave an
    encoder output unused: its adapter then gets no gradient (DistributedDataParallel needs
    find_unused_parameters=True).
    """

    def __init__(self, genotype, in_channels: Sequence[int] = (24, 32, 96, 320), num_classes: int = 21,
                 channels: int = 48, sep_repeats: int = 1, aux: Optional[str] = "cell",
                 in_strides: Sequence[int] = (4, 8, 16, 32), fused: Optional[bool] = None):
        super().__init__()
        genotype = Genotype.parse(genotype)
        if aux not in AUX_KINDS:
            raise ValueError(f"aux must be one of {AUX_KINDS}, got {aux!r}")
        if len(in_channels) != len(in_strides):
            raise ValueError(f"in_channels {tuple(in_channels)} and in_strides {tuple(in_strides)} differ in length")
        if len(in_channels) != 4:
            raise ValueError(f"the search space has 4 encoder inputs, got in_channels={tuple(in_channels)}")
        for name, value in (("num_classes", num_classes), ("channels", channels), ("sep_repeats", sep_repeats)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int of at least 1, got {value!r}")
        self.genotype = genotype
        self.num_classes = num_classes
        self.in_strides = [int(s) for s in in_strides]
        self.adapters = nn.ModuleList([ConvBNReLU(c, channels, 1) for c in in_channels])

        strides = list(in_strides)
        self.blocks = nn.ModuleList()
        self.block_inputs = []
        for a, b in genotype.connectivity:
            self.blocks.append(Block(genotype, channels, sep_repeats, fused, strides[a] <= strides[b]))
            self.block_inputs += [a, b]
            strides.append(min(strides[a], strides[b]))

        read = set(self.block_inputs)
        self.head_inputs = [i for i in range(4, len(strides)) if i not in read]
        self.output_stride = min(strides[i] for i in self.head_inputs)
        self.head_target = next(i for i in self.head_inputs if strides[i] == self.output_stride)
        self.head = nn.Sequential(
            ConvBNReLU(len(self.head_inputs) * channels, channels, 1),
            nn.Conv2d(channels, num_classes, 3, padding=1),
        )
        self.aux = nn.ModuleList()
        if aux is not None:
            self.aux.extend(AuxHead(genotype, channels, num_classes, sep_repeats, aux == "cell", fused)
                            for _ in self.blocks)
        self._init_weights()

    def classifiers(self) -> List[nn.Conv2d]:
        """The convolutions that score the classes: the head's last, and each auxiliary head's."""
        return [self.head[-1]] + [aux.classifier for aux in self.aux]

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)  # the paper: Xavier initialisation of the decoder
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _pool(self, features: List[Tensor]) -> List[Tensor]:
        if len(features) != len(self.adapters):
            raise ValueError(f"the decoder takes {len(self.adapters)} feature maps, got {len(features)}")
        self._check_strides(features)
        pool: List[Tensor] = []
        for i, adapter in enumerate(self.adapters):
            pool.append(adapter(features[i]))
        for k, block in enumerate(self.blocks):
            pool.append(block(pool[self.block_inputs[2 * k]], pool[self.block_inputs[2 * k + 1]]))
        return pool

    def _check_strides(self, features: List[Tensor]):
        """Feature maps at other strides than in_strides (their order swapped, say) would make the
        blocks resample the wrong way and the logits come out at another size, silently. Map i's
        height and width times its stride is the image's, up to rounding: within twice the stride."""
        for i in range(1, len(features)):
            for d in (-2, -1):
                here, first = features[i].shape[d] * self.in_strides[i], features[0].shape[d] * self.in_strides[0]
                if abs(here - first) >= 2 * max(self.in_strides[i], self.in_strides[0]):
                    raise ValueError(f"feature maps 0 and {i} ({features[0].shape[-2]}x{features[0].shape[-1]} and "
                                     f"{features[i].shape[-2]}x{features[i].shape[-1]}) are not at strides "
                                     f"{self.in_strides[0]} and {self.in_strides[i]}: give the features in the "
                                     f"order of in_strides {self.in_strides}, or the in_strides they have")

    def _head(self, pool: List[Tensor]) -> Tensor:
        size = pool[self.head_target].shape[-2:]
        return self.head(torch.cat([upsampled(pool[i], size) for i in self.head_inputs], dim=1))

    def forward(self, features: List[Tensor]) -> Tensor:
        return self._head(self._pool(features))

    @torch.jit.export
    def forward_with_aux(self, features: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        pool = self._pool(features)
        aux: List[Tensor] = []
        for k, head in enumerate(self.aux):
            aux.append(head(pool[4 + k]))
        return self._head(pool), aux
