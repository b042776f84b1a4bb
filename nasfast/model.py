"""A whole segmentation network: encoder + decoder, and the factory for deployed models."""
from typing import List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from .decoder import Decoder
from .encoder import MobileNetV2Encoder


class Segmenter(nn.Module):
    """Encoder then decoder; `forward` returns logits upsampled to the input size."""

    def __init__(self, encoder: nn.Module, decoder: Decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward_with_aux(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Logits and auxiliary outputs at the decoder's resolution (losses upsample them)."""
        return self.decoder.forward_with_aux(self.encoder(x))


def create_model(name_or_genotype, num_classes: int, pretrained=False, aux: Optional[str] = None,
                 channels: int = 64, sep_repeats: int = 2, fused: Optional[bool] = None) -> Segmenter:
    """The final configuration (SPEC section 7): C=64, R=2; no auxiliary heads unless asked for
    (training uses aux="cell"; the deployed model has none)."""
    encoder = MobileNetV2Encoder(pretrained=pretrained)
    decoder = Decoder(name_or_genotype, in_channels=encoder.channels, num_classes=num_classes,
                      channels=channels, sep_repeats=sep_repeats, aux=aux, in_strides=encoder.strides,
                      fused=fused)
    return Segmenter(encoder, decoder)
