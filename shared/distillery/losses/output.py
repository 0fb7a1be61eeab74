"""What a loss sees of a model's forward pass: its logits and the feature maps at named taps."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import Tensor, nn

from distillery.models.taps import FeatureTaps


@dataclass
class ModelOutput:
    """Logits (N, C, H, W) and feature maps by tap name (`encoder.<i>`, `bottleneck`, ...)."""

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)

    def tap(self, name: str, role: str = "model") -> Tensor:
        """The map at tap `name`; `logits` names the output itself."""
        if name == "logits":
            return self.logits
        try:
            return self.features[name]
        except KeyError:
            have = ", ".join(sorted(self.features)) or "none"
            raise KeyError(
                f"the {role} output has no feature {name!r} (it has: {have}); run the {role} "
                f"under FeatureTaps(model, objective.{role}_taps)"
            ) from None

    def detach(self) -> ModelOutput:
        return ModelOutput(self.logits.detach(), {k: v.detach() for k, v in self.features.items()})


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def run_with_taps(model: nn.Module, images: Tensor, taps: Iterable[str]) -> ModelOutput:
    """Forward `images` through `model`, reading the feature maps at `taps` (hooks are placed on
    the unwrapped model, so a DDP- or accelerate-wrapped model works)."""
    with FeatureTaps(unwrap(model), taps) as hooked:
        logits = model(images)
    return ModelOutput(logits, dict(hooked.features))
