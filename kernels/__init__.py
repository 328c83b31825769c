"""Triton kernels of fastmtl, installed as ``fastmtl.kernels``.

The bottom of the import graph: nothing here imports ``fastmtl.layers``, ``models``, ``engine`` or ``data``. Each op
package (``dfe/``, ``window_attention/``) has ``kernels.py`` (Triton code), ``ops.py`` (launchers, ``torch.library``
ops, fakes, autograd; tensors only), ``ref.py`` (the PyTorch reference, importable without Triton) and ``aot.py``;
shared helpers are in ``_utils.py``. Nothing is compiled or launched at import time; an ``ops`` module registers
its ``torch.library`` ops when it is first imported (the layers import it lazily, only on the Triton path).
:func:`fastmtl.kernels.aot.report` is the ahead-of-time compilation report (registers, spills, load kinds) of every
kernel configuration at the launch shapes it is given; ``python -m fastmtl.kernel_report`` prints it for the model's.
"""

import sys


def chosen_configs() -> dict:
    """Kernel name -> shape key -> the configuration autotuning chose in this process (JSON-able; ``{}`` when no
    tuned kernel ran). Imports nothing: only kernels already used can have a choice."""
    tuning = sys.modules.get(f"{__name__}.autotune")
    return tuning.chosen_configs() if tuning is not None else {}
