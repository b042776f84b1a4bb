"""A workaround that keeps torch.jit.script reliable in a process that also defines, extends or
destroys operator libraries (torch.compile, torch.library.opcheck, the tests).

TorchScript recognises builtin ops by id(). The op objects whose ids it records can be freed
while their ids stay in its table: when a new overload is added to an op (importing
torch._inductor does so), the op object is replaced; when a torch.library.Library is destroyed,
its ops' packets are dropped. Any later object that Python places at a freed address (a module's
attribute, say) is then taken for that op, and scripting fails at random with "builtin cannot be
used as a value". Keeping every registered object alive keeps its id taken.
"""
import torch.jit._builtins as builtins

_registered = []


def keep_registered_builtins_alive() -> None:
    register = builtins._register_builtin
    if getattr(register, "keeps_objects_alive", False):
        return

    def register_and_keep(fn, op):
        _registered.append(fn)
        register(fn, op)

    register_and_keep.keeps_objects_alive = True
    builtins._register_builtin = register_and_keep
