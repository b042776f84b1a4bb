"""A workaround that keeps torch.jit.script reliable in a process that also runs torch.compile
or torch.library.opcheck (bench/latency.py, the tests).

TorchScript recognises builtin ops by id(). When a new overload is added to an existing op, as
importing torch._inductor does for some quantization ops, the op object the packet held is
replaced and freed, while its id stays in TorchScript's table; any later object that Python
places at that address (a module's attribute, say) is then taken for that op, and scripting
fails at random with "builtin cannot be used as a value". Keeping the replaced objects alive
keeps their ids taken.
"""
import torch

_replaced_ops = []


def keep_replaced_ops_alive() -> None:
    refresh = getattr(torch._ops, "_refresh_packet", None)
    if refresh is None or getattr(refresh, "keeps_replaced_ops", False):
        return

    def refresh_keeping_the_old_op(packet):
        _replaced_ops.append(packet._op)
        refresh(packet)

    refresh_keeping_the_old_op.keeps_replaced_ops = True
    torch._ops._refresh_packet = refresh_keeping_the_old_op
