"""Building blocks of ResFormer-MTL, one concept per module."""

from fastmtl.layers.dfe import DFE, DFE3
from fastmtl.layers.drop import DropPath
from fastmtl.layers.eca import ECA
from fastmtl.layers.patch_embed import MultiScalePatchEmbed, MultiScalePatchMerging
from fastmtl.layers.spatial_attention import SpatialAttention
from fastmtl.layers.swin import SwinBlock, SwinStage, WindowAttention

__all__ = [
    "DFE",
    "DFE3",
    "DropPath",
    "ECA",
    "MultiScalePatchEmbed",
    "MultiScalePatchMerging",
    "SpatialAttention",
    "SwinBlock",
    "SwinStage",
    "WindowAttention",
]
