"""The graphs: what each network computes as plain named tensors (wrappers) and its declared shapes
(specs, registry). Export, engine building and the runtime all read them; they import only ``models``.
"""

from .registry import ALL_GRAPHS, GRAPHS, TORCH_ONLY, deepcache_graphs, unet3d_graph
from .spec import DynamicDim, GraphSpec, TensorSpec

__all__ = ["ALL_GRAPHS", "GRAPHS", "TORCH_ONLY", "DynamicDim", "GraphSpec", "TensorSpec", "deepcache_graphs",
           "unet3d_graph"]
