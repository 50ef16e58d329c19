"""Depth compression: fewer decoder layers, each of the original shape (FlattenGPT and a layer-drop baseline).

- `similarity`: hidden-state similarity, FlattenGPT's greedy grouping, block influence;
- `merge`: flatten a group of layers into one wide layer (exact);
- `prune_back`: head / KV-group selection and ridge-leverage MLP selection with Nyström compensation;
- `driver`: the two calibration passes and the rebuilt stack;
- `flattengpt`, `shortgpt`: the methods.
"""

from slimkit.depth.driver import DepthMethod, compress_depth

__all__ = ["DepthMethod", "compress_depth"]
