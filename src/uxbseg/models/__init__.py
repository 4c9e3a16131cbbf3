"""Plain PyTorch modules of the fusion model (no Lightning here)."""

from .fusion import FusionHead
from .image_branch import ImageBranch
from .model import UXBFusionModel
from .voxel_branch import VoxelBranch

__all__ = ["FusionHead", "ImageBranch", "UXBFusionModel", "VoxelBranch"]
