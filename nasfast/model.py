"""A whole segmentation network: encoder + decoder, and the factory for deployed models."""
from typing import List, Optional, Tuple

from torch import Tensor, nn

from .decoder import Decoder
from .encoder import MobileNetV2Encoder
from .ops.upsample_add import upsampled


class Segmenter(nn.Module):
    """Encoder then decoder; `forward` returns logits upsampled to the input size."""

    def __init__(self, encoder: nn.Module, decoder: Decoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        logits = self.decoder(self.encoder(x))
        return upsampled(logits, x.shape[-2:])

    def forward_with_aux(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """The logits at the decoder's stride and the auxiliary heads' outputs, each at the stride of
        the block it reads (the losses upsample them to the labels)."""
        return self.decoder.forward_with_aux(self.encoder(x))


FINAL_CHANNELS, FINAL_SEP_REPEATS = 64, 2  # the decoder of a found design, trained fully (SPEC section 7)


def create_model(genotype, num_classes: int, pretrained=False, aux: Optional[str] = None,
                 channels: int = FINAL_CHANNELS, sep_repeats: int = FINAL_SEP_REPEATS,
                 fused: Optional[bool] = None) -> Segmenter:
    """MobileNet-v2 and the decoder of `genotype` (a Genotype, a zoo name such as "arch0", the
    paper's nested list or its JSON text): the final configuration by default; no auxiliary heads
    unless asked for (training uses aux="cell"; the deployed model has none)."""
    encoder = MobileNetV2Encoder(pretrained=pretrained)
    decoder = Decoder(genotype, in_channels=encoder.channels, num_classes=num_classes,
                      channels=channels, sep_repeats=sep_repeats, aux=aux, in_strides=encoder.strides,
                      fused=fused)
    return Segmenter(encoder, decoder)
