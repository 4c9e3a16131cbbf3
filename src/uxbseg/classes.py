"""The class map: one place for names, indices, mask values, LAS codes and colours."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CLASSES",
    "IGNORE",
    "NUM_CLASSES",
    "UXBClass",
    "class_to_las_code",
    "las_code_to_class",
    "mask_value_to_class",
]

IGNORE = -100
"""Label of anything that has no class: unmapped codes, unmapped mask values, empty voxels."""


@dataclass(frozen=True)
class UXBClass:
    """One class of the UXB problem."""

    index: int
    name: str
    mask_value: int
    las_code: int
    colour: tuple[int, int, int]


CLASSES: tuple[UXBClass, ...] = (
    UXBClass(0, "ground", 0, 2, (166, 134, 90)),
    UXBClass(1, "plazuela", 76, 27, (60, 160, 220)),
    UXBClass(2, "structure", 150, 6, (220, 50, 40)),
)
NUM_CLASSES = len(CLASSES)


def _lut(pairs: list[tuple[int, int]], size: int) -> np.ndarray:
    lut = np.full(size, IGNORE, dtype=np.int64)
    for key, value in pairs:
        lut[key] = value
    return lut


_MASK_LUT = _lut([(c.mask_value, c.index) for c in CLASSES], 256)
_LAS_LUT = _lut([(c.las_code, c.index) for c in CLASSES], 256)
_CODE_OF_CLASS = np.array([c.las_code for c in CLASSES], dtype=np.uint8)


def mask_value_to_class(values: np.ndarray) -> np.ndarray:
    """Map 8-bit mask values (0/76/150) to class indices; anything else becomes IGNORE."""
    return _MASK_LUT[np.asarray(values, dtype=np.uint8)]


def las_code_to_class(codes: np.ndarray) -> np.ndarray:
    """Map LAS classification codes (2/27/6) to class indices; anything else becomes IGNORE."""
    return _LAS_LUT[np.asarray(codes, dtype=np.uint8)]


def class_to_las_code(classes: np.ndarray) -> np.ndarray:
    """Map class indices back to LAS codes with one table lookup (no per-point Python)."""
    return _CODE_OF_CLASS[np.asarray(classes, dtype=np.intp)]
