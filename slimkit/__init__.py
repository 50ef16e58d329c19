"""slimkit: structured compression of Hugging Face causal LMs into smaller checkpoints that load."""

__version__ = "0.1.0"

from slimkit.api import CompressionRequest, CompressionResult, compress
from slimkit.calibration import CalibrationSpec
from slimkit.evaluate import EvalSpec
from slimkit.latency import Workload
from slimkit.layerwise import LayerTarget
from slimkit.recovery import RecoverySpec
from slimkit.transact import TransActSpec

__all__ = [
    "CalibrationSpec",
    "CompressionRequest",
    "CompressionResult",
    "EvalSpec",
    "LayerTarget",
    "RecoverySpec",
    "TransActSpec",
    "Workload",
    "compress",
]
