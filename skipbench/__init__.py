"""skipbench: measure how skip connections change deep networks.

The names a plugin author needs are importable from here without importing torch.
"""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402
from .specs import (BlockBuilder, Measurement, Param, Prediction, PredictionSetting, Provider, UsageError,  # noqa: E402
                    Variant)



def load(run_dir):
    """A run's table as a pandas DataFrame, one row per measured value (tidy data: the columns of
    skipbench.results.COLUMNS, then the measurement-specific extras); the run's metadata
    (results.json) is in ``frame.attrs["meta"]``. Needs pandas (``pip install skipbench[pandas]``).
    An interrupted run gives the tasks it finished (and empty metadata)."""
    from pathlib import Path

    from . import results

    try:
        import pandas  # noqa: F401  (pyarrow's to_pandas needs it)
    except ImportError:
        raise ImportError("skipbench.load needs pandas: pip install 'skipbench[pandas]'") from None
    path = Path(run_dir)
    if not (path / "results.json").is_file() and not (path / results.FRAGMENTS).is_dir():
        raise UsageError(f"{str(run_dir)!r} is not a skipbench run directory (no results.json, no {results.FRAGMENTS}/)")
    meta, table = results.load(path)
    frame = table.to_pandas()
    frame.attrs["meta"] = meta
    return frame


__all__ = ["load", "hookimpl", "BlockBuilder", "Measurement", "Param", "Prediction", "PredictionSetting", "Provider",
           "UsageError", "Variant", "__version__"]
