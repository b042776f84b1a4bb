"""Training checkpoints: the model's recipe (genotype, classes) with its weights."""
import json
import math
import os
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Set

import torch

from .cli import UsageError
from .files import checkpoints_in
from .genotype import Genotype
from .model import Segmenter, create_model

MODEL_KEYS = ("model", "genotype", "num_classes", "channels", "sep_repeats")
DAMAGED_ADVICE = "copy it again, or use another checkpoint"
RESUME_KEYS = MODEL_KEYS + ("encoder_optimizer", "decoder_optimizer", "epoch", "best_miou")


def check_classes(where: str, class_names: Sequence[str], checkpoint: Dict[str, Any]) -> None:
    """The data at `where` must have the classes the checkpoint's model was trained on."""
    if len(class_names) != checkpoint["num_classes"]:
        raise UsageError(f"{where}: the dataset has {len(class_names)} classes, the model was trained on "
                         f"{checkpoint['num_classes']}")
    trained = checkpoint.get("class_names")
    if trained is not None and list(class_names) != list(trained):
        differ = next(c for c, (a, b) in enumerate(zip(class_names, trained)) if a != b)
        raise UsageError(f"{where}: the dataset's class {differ} is {class_names[differ]!r}, the model's "
                         f"{trained[differ]!r} (classes {list(class_names)} against {list(trained)})")


def load_checkpoint(path: str, keys: Sequence[str] = MODEL_KEYS) -> Dict[str, Any]:
    """The checkpoint in `path`; UsageError when it is not one of python -m nasfast.train or lacks `keys`."""
    if os.path.isdir(path):
        held = checkpoints_in(path)
        raise UsageError(f"{path} is a directory: give a checkpoint{' in it: ' + ' or '.join(held) if held else ''}")
    if is_torchscript(path):  # torch.load would hand it to torch.jit.load
        raise UsageError(_not_a_checkpoint(path, "it is a TorchScript file, as python -m nasfast.export writes"))
    refuse_damaged(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} not found") from None
    except OSError:
        raise
    except Exception as error:  # torch.load fails in many ways on a foreign file
        if starts_as_zip(path) and not zipfile.is_zipfile(path):  # torch.save's zip archive, cut short
            raise UsageError(f"{path} is damaged: a zip archive, as torch.save writes, that torch.load cannot read "
                             f"({type(error).__name__}); {DAMAGED_ADVICE}") from None
        raise UsageError(_not_a_checkpoint(path, f"torch.load cannot read it: {type(error).__name__}")) from None
    missing = [key for key in keys if key not in state] if isinstance(state, dict) else list(keys)
    if missing:
        raise UsageError(_not_a_checkpoint(path, f"it lacks {', '.join(missing)}"))
    if isinstance(state, dict) and holds_non_finite(state.get("model")):  # bytes overwritten: never saved so
        raise UsageError(f"{path} is damaged: its weights hold non-finite values; {DAMAGED_ADVICE}")
    problem = _recipe_problem(state)
    if problem:
        raise UsageError(f"{path} is damaged or edited: {problem}; {DAMAGED_ADVICE}")
    return state


def _recipe_problem(state: Dict[str, Any]) -> Optional[str]:
    """What makes the checkpoint's recipe (what the training stored beside the weights) unusable."""
    checks = {"num_classes": lambda v: is_amount(v, 1), "channels": lambda v: is_amount(v, 1),
              "sep_repeats": lambda v: is_amount(v, 1), "epoch": lambda v: is_amount(v, 0),
              "scale": lambda v: is_amount(v, 0, whole=False) and v > 0,
              "dataset": lambda v: isinstance(v, str), "data_root": lambda v: isinstance(v, str),
              "class_names": lambda v: isinstance(v, list) and all(isinstance(name, str) for name in v)}
    bad = next((key for key, fits in checks.items() if key in state and not fits(state[key])), None)
    if bad is not None:
        return f"its {bad} is {state[bad]!r}"
    if "genotype" not in state:  # not among the keys asked for
        return None
    try:
        Genotype.parse(state["genotype"])
    except (ValueError, TypeError) as error:
        return f"its genotype is not a design ({error})"
    return None


def is_amount(value: Any, low: int, whole: bool = True) -> bool:
    """Whether `value` is a finite number of at least `low` (an int where `whole`), not a bool: a
    count or a size stored in a checkpoint or a search's state."""
    return isinstance(value, int if whole else (int, float)) and not isinstance(value, bool) and low <= value < math.inf


def holds_non_finite(value: Any) -> bool:
    """Whether a floating-point tensor in `value` (nested dicts and lists) holds a NaN or an infinity."""
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, (list, tuple)) and any(holds_non_finite(v) for v in value)


def refuse_damaged(path: str, advice: str = DAMAGED_ADVICE) -> None:
    """UsageError where the bytes of the archive `path` (torch.save's or torch.jit.save's) differ from
    those saved: neither torch.load nor torch.jit.load checks the CRC-32s the archive stores."""
    member = damaged_member(path)
    if member:
        raise UsageError(f"{path} is damaged: its bytes differ from what was saved (checksum of {member}); {advice}")


def damaged_member(path: str) -> Optional[str]:
    """The first member of the zip archive `path` (torch.save writes one) whose bytes differ from its
    stored CRC-32; None when all match or `path` is no zip archive. Members stored with CRC 0 and
    bytes are not checked (torch.serialization.set_crc32_options(False) saves so), nor is an archive
    that zipfile cannot read (torch.load then says why)."""
    if not zipfile.is_zipfile(path):  # a truncated archive is not: torch.load's failure names it
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size:
                    continue
                with archive.open(info) as member:
                    try:
                        while member.read(1 << 20):
                            pass
                    except zipfile.BadZipFile:  # what reading a stored member raises: "Bad CRC-32"
                        return info.filename
    except OSError:
        raise
    except Exception:  # a damaged directory or header, say
        return None
    return None


def starts_as_zip(path: str) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == b"PK\x03\x04"


def _not_a_checkpoint(path: str, reason: str) -> str:
    return f"{path} is not a checkpoint of python -m nasfast.train ({reason})"


def export_info(path: str) -> Dict[str, Any]:
    """The nasfast.json (design, classes, input statistics) that python -m nasfast.export stores in
    its TorchScript file, read from the archive without loading the model."""
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith("/extra/nasfast.json")]
        if not names:
            raise ValueError(f"TorchScript file {path} has no nasfast.json: not written by python -m nasfast.export")
        info = json.loads(archive.read(names[0]))
    if not {"genotype", "num_classes"} <= info.keys():
        raise ValueError(f"export {path} names no design: export it again with python -m nasfast.export")
    return info


def is_torchscript(path: str) -> bool:
    """Whether `path` is a TorchScript archive (torch.jit.save writes its code under <name>/code/)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_fitting_weights(model: torch.nn.Module, checkpoint: Dict[str, Any], classifiers: bool = True) -> List[str]:
    """Loads into model the checkpoint's weights that fit it by name and shape (a model of the same
    design for another number of classes: all but the classifiers'); classifiers=False leaves the
    classifiers out whatever their shapes (as many classes, other ones). Returns the names of the
    tensors left as they were."""
    own = model.state_dict()
    left = set() if classifiers else classifier_weights(model)
    fitting = {k: v for k, v in checkpoint["model"].items() if k in own and own[k].shape == v.shape and k not in left}
    model.load_state_dict(fitting, strict=False)
    return sorted(k for k in own if k not in fitting)


def classifier_weights(model: torch.nn.Module) -> Set[str]:
    """The state-dict names of a Segmenter's class-scoring convolutions (its decoder's classifiers)."""
    classifiers = {id(module) for module in model.decoder.classifiers()}
    return {f"{name}.{key}" for name, module in model.named_modules() if id(module) in classifiers
            for key in module.state_dict()}


def load_trained(path: str, fused=None) -> Segmenter:
    """The trained model of a checkpoint of python -m nasfast.train (best.pt or last.pt), as deployed:
    no auxiliary heads, eval mode. Its input: RGB / 255 normalised by IMAGENET_MEAN and IMAGENET_STD,
    resized by the training's scale (torch.load(path)["scale"])."""
    return model_from_checkpoint(load_checkpoint(path), fused=fused, source=path).eval()


def model_from_checkpoint(checkpoint: Dict[str, Any], aux=None, fused=None,
                          source: str = "the checkpoint") -> Segmenter:
    """The deployed model (no auxiliary heads unless asked for) with the weights of the checkpoint
    (read from `source`)."""
    model = create_model(checkpoint["genotype"], checkpoint["num_classes"], pretrained=False, aux=aux,
                         channels=checkpoint["channels"], sep_repeats=checkpoint["sep_repeats"], fused=fused)
    weights = checkpoint["model"]
    if aux is None and isinstance(weights, dict):
        weights = {k: v for k, v in weights.items() if not k.startswith("decoder.aux.")}
    load_exact_weights(model, weights, source)
    return model


def load_exact_weights(model: torch.nn.Module, weights: Any, source: str) -> None:
    """model.load_state_dict(weights), or a UsageError, in one line, where they do not fit."""
    expected = model.state_dict()
    if not isinstance(weights, dict):
        raise UsageError(f"{source} is damaged: its weights are a {type(weights).__name__}, not named tensors")

    def fits(name: str) -> bool:
        return isinstance(weights[name], torch.Tensor) and weights[name].shape == expected[name].shape
    problems = [f"{len(names)} {what}, e.g. {names[0]}" for what, names in (
        ("missing", sorted(expected.keys() - weights.keys())),
        ("not of the model", sorted(weights.keys() - expected.keys())),
        ("of other shapes", sorted(name for name in expected.keys() & weights.keys() if not fits(name))),
    ) if names]
    if problems:
        raise UsageError(f"{source}: its weights do not fit the model it describes ({'; '.join(problems)}): it was "
                         f"edited, or mixes files of different runs")
    model.load_state_dict(weights)
