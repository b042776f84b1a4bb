"""Settings as dataclass fields that know how their command-line option parses them, so that a
config.json edited by hand is checked (and converted: "5" is 5) as the command line would."""
import argparse
import dataclasses
from typing import Any, Callable, Optional, Sequence

from .cli import option_text


def option(default, help: str, type: Optional[Callable[[str], Any]] = None,
           choices: Optional[Sequence[str]] = None, nargs: Optional[int] = None) -> dataclasses.Field:
    """A setting; `type` parses (and checks) its command-line value, or each item of a tuple
    (of `nargs` items, or any number)."""
    return dataclasses.field(default=default, metadata={"help": help, "type": type, "choices": choices,
                                                        "nargs": nargs})


def add_option(parser, setting: dataclasses.Field, flag: str, default: Any = dataclasses.MISSING,
               help: Optional[str] = None, **kwargs) -> None:
    """The command-line option of `setting`, parsed as check_settings checks it; left out, it is
    None (told apart from a value given). Its help is the setting's, with `default` (the field's
    unless given) where there is one."""
    default = setting.default if default is dataclasses.MISSING else default
    if isinstance(setting.default, tuple):
        kwargs = {"nargs": setting.metadata["nargs"] or "+", "metavar": "X", **kwargs}
    shown = f" [{option_text(default)}]" if default != () else ""
    parser.add_argument(flag, default=None, type=setting.metadata["type"], choices=setting.metadata["choices"],
                        help=help or setting.metadata["help"] + shown, **kwargs)


def check_settings(settings: Any, prefix: str = "") -> None:
    """Each option of the dataclass `settings` as its parser takes it (a tuple for a list); ValueError
    naming the first (with `prefix`) that it would refuse."""
    for f in dataclasses.fields(settings):
        if "type" in f.metadata:
            setattr(settings, f.name, _parsed(prefix + f.name, getattr(settings, f.name), f))


def _parsed(name: str, value: Any, f: dataclasses.Field) -> Any:
    parse, choices = f.metadata["type"], f.metadata["choices"]
    may_be_none = f.default is None or (choices is not None and "none" in choices)

    def one(item):
        if item is None and may_be_none or item == "none" and "none" in (choices or ()):  # as the command line
            return None
        if choices is not None and item not in choices:
            raise ValueError(f"choose one of {', '.join(choices)}")
        return parse(str(item)) if parse is not None else item

    try:
        if not isinstance(f.default, tuple):
            return one(value)
        count = f.metadata["nargs"]
        if not isinstance(value, (list, tuple)) or count is not None and len(value) != count:
            raise ValueError("expected a list" if count is None else f"expected {count} values")
        return tuple(one(v) for v in value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"{name} is {value!r}: {error}") from None


def check_low_high(name: str, pair: Sequence[float]) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"{name} is {list(pair)}: the first must not be larger than the second")
