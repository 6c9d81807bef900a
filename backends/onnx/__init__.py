"""The ONNX backend: concept-erasure patches written into exported UNet graphs.

``locate`` finds each site's weight initializer (by node name or metadata, confirmed by shape),
``rewrite`` confirms it by value and applies one of three modes (bake, switchable, adapter),
``files`` reads and writes graphs (external data over 2 GB) and ORT adapters.
research/ecosystem.md §4.
"""

from .factors import PatchDeltas, SiteDelta, deltas_from_solution
from .files import adapter_path, load_graph, write_graph
from .locate import FUSED_ATTENTION_OPS, SiteMatch, locate_sites
from .rewrite import MODES, SCALE_INPUT, OnnxOptions, OnnxPatchResult, patch_graph

__all__ = [
    "FUSED_ATTENTION_OPS",
    "MODES",
    "SCALE_INPUT",
    "OnnxOptions",
    "OnnxPatchResult",
    "PatchDeltas",
    "SiteDelta",
    "SiteMatch",
    "adapter_path",
    "deltas_from_solution",
    "load_graph",
    "locate_sites",
    "patch_graph",
    "write_graph",
]
