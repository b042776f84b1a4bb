"""Training checkpoints: the model's recipe (genotype, classes) with its weights, saved atomically."""
import io
from typing import Any, Dict

import torch

from .model import Segmenter, create_model
from .search.records import write_atomic


def save_checkpoint(state: Dict[str, Any], *paths: str) -> None:
    """Serialises state once and writes it to each path."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for path in paths:
        write_atomic(path, buffer.getvalue())


def load_checkpoint(path: str) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} not found") from None


def model_from_checkpoint(checkpoint: Dict[str, Any], aux=None, fused=None) -> Segmenter:
    """The deployed model (no auxiliary heads unless asked for) with the checkpoint's weights."""
    model = create_model(checkpoint["genotype"], checkpoint["num_classes"], pretrained=False, aux=aux,
                         channels=checkpoint["channels"], sep_repeats=checkpoint["sep_repeats"], fused=fused)
    weights = checkpoint["model"]
    if aux is None:
        weights = {k: v for k, v in weights.items() if not k.startswith("decoder.aux.")}
    model.load_state_dict(weights)
    return model
