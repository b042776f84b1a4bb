"""nasfast: fast neural architecture search of compact segmentation decoders."""
from . import data, metrics, ops
from .checkpoint import load_trained
from .complexity import count_madds, count_params
from .decoder import Decoder
from .encoder import IMAGENET_MEAN, IMAGENET_STD, MobileNetV2Encoder
from .genotype import Genotype
from .model import Segmenter, create_model
from .torchscript import keep_registered_builtins_alive

keep_registered_builtins_alive()

__all__ = ["Genotype", "Decoder", "MobileNetV2Encoder", "Segmenter", "create_model", "load_trained",
           "count_params", "count_madds", "IMAGENET_MEAN", "IMAGENET_STD", "data", "metrics", "ops"]
__version__ = "0.1.0"
