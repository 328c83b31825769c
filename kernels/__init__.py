"""Triton kernels of fastmtl, installed as ``fastmtl.kernels``.

Nothing is compiled or launched at import time; each op module registers its ``torch.library`` ops when it is
first imported (the layers import it lazily, only on the Triton path).
"""
