"""nasfast: fast neural architecture search of compact segmentation decoders."""
from . import metrics, ops
from .complexity import count_madds, count_params
from .decoder import Decoder
from .encoder import MobileNetV2Encoder
from .genotype import Genotype
from .model import Segmenter, create_model
from .torchscript import keep_registered_builtins_alive

keep_registered_builtins_alive()

__all__ = ["Genotype", "Decoder", "MobileNetV2Encoder", "Segmenter", "create_model",
           "count_params", "count_madds", "metrics", "ops"]
__version__ = "0.1.0"
