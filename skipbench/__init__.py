"""skipbench: measure how skip connections change deep networks.

The names a plugin author needs are importable from here without importing torch.
"""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402
from .specs import BlockBuilder, Measurement, Param, Provider, UsageError, Variant  # noqa: E402

__all__ = ["hookimpl", "BlockBuilder", "Measurement", "Param", "Provider", "UsageError", "Variant", "__version__"]
