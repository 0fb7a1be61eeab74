"""The exported-model format: one `.pt` file a model can be rebuilt from without its spec file.

Contract (a `torch.save`d dict, readable with ``torch.load(weights_only=True)``):

- ``model_spec``: the `ModelSpec` as a JSON-able dict (its ``width`` may still read ``auto``),
- ``width``: int, the width the weights were trained at (an ``auto`` width resolved),
- ``state_dict``: the model's ``state_dict()`` (wrapper prefixes ``module.``/``_orig_mod.``
  removed),
- ``format``: ``distillery.model/1``.

The trainer exports its final model with `save_model_checkpoint`; the profiler and evaluation
read it with `load_model_checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from distillery.models.registry import build_model
from distillery.spec import ModelSpec, format_validation_error

FORMAT = "distillery.model/1"
REQUIRED_KEYS = ("model_spec", "width", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match its architecture; names the file."""


def _clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v.detach().cpu()
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _mismatch(
    expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], limit: int = 8
) -> list[str]:
    """Human-readable differences between two state dicts (missing, unexpected, shapes)."""

    def some(keys: list[str]) -> str:
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {some(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {some(shapes)}")
    return problems


def save_model_checkpoint(path: str | Path, model: nn.Module, model_spec: ModelSpec) -> Path:
    """Write `model` (trained at `model_spec`, its width resolved) in the exported-model format.

    The width is the model's own (`model.width`) or the spec's if that is a number. Refuses to
    write a file that `load_model_checkpoint` could not rebuild (keys or shapes that do not match
    `build_model(model_spec, width)`).
    """
    path = Path(path)
    model = _unwrap(model)
    width = getattr(model, "width", None)
    if width is None:
        if model_spec.width == "auto":
            raise ValueError(
                "model_spec.width is 'auto' and the model has no `width` attribute: resolve it"
            )
        width = int(model_spec.width)
    state = _clean_state_dict(model.state_dict())
    expected = build_model(model_spec, width=int(width)).state_dict()
    if problems := _mismatch(expected, state):
        raise ValueError(
            f"{path}: the model does not match model_spec (arch {model_spec.arch}, width {width}, "
            f"depth {model_spec.depth}): " + "; ".join(problems)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "model_spec": model_spec.model_dump(mode="json"),
        "width": int(width),
        "state_dict": state,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_model_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model of an exported checkpoint -> (model in eval mode, ModelSpec with the
    resolved width). Raises FileNotFoundError or CheckpointError naming the file and what is
    wrong (missing or unexpected keys, shapes that do not match the architecture)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(payload, dict) or (missing := [k for k in REQUIRED_KEYS if k not in payload]):
        got = sorted(payload)[:10] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path}: not an exported model: needs keys {', '.join(REQUIRED_KEYS)}"
            + (f", missing {', '.join(missing)}" if isinstance(payload, dict) else "")
            + f" (found {got}); export models with save_model_checkpoint"
        )
    if (fmt := payload.get("format", FORMAT)) != FORMAT:
        raise CheckpointError(f"{path}: format {fmt!r}, this version reads {FORMAT!r}")
    width = payload["width"]
    if not isinstance(width, int) or width < 1:
        raise CheckpointError(f"{path}: width must be a positive int, got {width!r}")
    raw = {**payload["model_spec"], "width": width}
    try:
        spec = ModelSpec.model_validate(raw)
    except ValidationError as e:
        raise CheckpointError(
            f"{path}: invalid model_spec\n{format_validation_error(e, raw)}"
        ) from None
    except TypeError:
        raise CheckpointError(f"{path}: model_spec must be a mapping") from None
    model = build_model(spec)
    state = payload["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: state_dict must be a mapping of tensors")
    if problems := _mismatch(model.state_dict(), state):
        raise CheckpointError(
            f"{path}: the weights do not match the architecture in its model_spec "
            f"({spec.arch}, width {width}, depth {spec.depth}, separable {spec.separable}, "
            f"upsample {spec.upsample}, norm {spec.norm}): " + "; ".join(problems)
        )
    model.load_state_dict(state)
    return model.to(map_location).eval(), spec
