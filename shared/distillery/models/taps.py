"""Read intermediate feature maps by module name with forward hooks."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class FeatureTaps:
    """Context manager: while open, `taps.features[name]` holds the output of submodule `name`
    from the latest forward pass. `logits` is not a module; callers take it from the output.

    >>> with FeatureTaps(model, ["encoder.1", "bottleneck"]) as taps:
    ...     logits = model(x)
    ...     f = taps.features["bottleneck"]
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.model = model
        self.names = [n for n in dict.fromkeys(names) if n != "logits"]
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> FeatureTaps:
        for name in self.names:
            try:
                module = self.model.get_submodule(name)
            except AttributeError:
                raise KeyError(f"unknown tap {name!r}: no submodule of that name") from None
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):  # noqa: ANN202
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self.features[name] = output

        return hook

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
