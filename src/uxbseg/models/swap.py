"""In-place class swaps of submodules whose subclass changes a kernel, not the state."""

from __future__ import annotations

from torch import nn

__all__ = ["swap_class"]


def swap_class(module: nn.Module, old: type[nn.Module], new: type[nn.Module]) -> int:
    """Give every submodule of exactly class ``old`` inside ``module`` the class ``new`` (a
    subclass of ``old`` that adds no state: parameters and state_dict keys stay); returns how
    many were swapped."""
    if not issubclass(new, old):
        raise TypeError(f"{new.__name__} must subclass {old.__name__} to replace it in place")
    swapped = 0
    for child in module.modules():
        if type(child) is old:
            child.__class__ = new
            swapped += 1
    return swapped
