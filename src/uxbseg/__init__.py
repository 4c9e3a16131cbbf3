"""uxbseg: find ancient Maya architecture in airborne lidar with 2D+3D fusion segmentation."""

import logging

from .classes import CLASSES, IGNORE, NUM_CLASSES
from .config import Config, load_config
from .errors import BadDataError, ConfigError, UXBError

__all__ = [
    "CLASSES",
    "IGNORE",
    "NUM_CLASSES",
    "BadDataError",
    "Config",
    "ConfigError",
    "UXBError",
    "__version__",
    "load_config",
]

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
