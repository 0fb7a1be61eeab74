"""Ready-to-time callables, one per variant: eager, channels_last, torch.compile and ONNX Runtime,
each at fp32 or under bf16/fp16 autocast. The caller's model is never modified (each runner works
on its own copy)."""

from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from distillery.profiler.memory import peak_memory_mb
from distillery.profiler.peak import DTYPES
from distillery.profiler.variants import Variant


class Runner:
    """`prepare(batch_size)` -> a no-argument callable that runs one batch."""

    note: str | None = None

    def prepare(self, batch_size: int) -> Callable[[], object]:
        raise NotImplementedError

    def memory(self, batch_size: int) -> tuple[float | None, str]:
        """Peak memory of one extra, untimed call (see `distillery.profiler.memory`)."""
        return peak_memory_mb(self.prepare(batch_size), self.device)

    def close(self) -> None:
        """Release what the runner holds (copies of the model, sessions, files)."""

    device: torch.device


def _input(batch_size: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch_size)
    return torch.randn(batch_size, 3, *size, generator=g).to(device)


class TorchRunner(Runner):
    """eager / channels_last / compile, with autocast for bf16 and fp16.

    `compile` is ``torch.compile(dynamic=False)`` of a fresh copy per batch size (static
    shapes, the kernels a deployment at that batch size gets; dynamo's caches are reset between
    batch sizes so no recompilation limit is hit). Its first call compiles: the profiler refuses
    warm-up 0 for it and reports that call separately (``latency_ms.first_call``).
    """

    def __init__(
        self, model: nn.Module, variant: Variant, size: tuple[int, int], device: torch.device
    ) -> None:
        self.device, self.size, self.variant = device, size, variant
        self.channels_last = variant.runtime == "channels_last"
        self.compile = variant.runtime == "compile"
        m = model
        if self.channels_last:
            m = copy.deepcopy(model).to(memory_format=torch.channels_last)
        if self.compile:
            self.note = "compiled per batch size (dynamic=False); 1st call = compilation"
        self.source = m
        self.model = m
        self._compiled_for: int | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.variant.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.variant.precision])

    def _model_for(self, batch_size: int) -> nn.Module:
        if not self.compile:
            return self.model
        if self._compiled_for != batch_size:
            torch._dynamo.reset()  # the previous batch size's graphs: not needed any more
            self.model = torch.compile(copy.deepcopy(self.source), dynamic=False)
            self._compiled_for = batch_size
        return self.model

    def prepare(self, batch_size: int) -> Callable[[], object]:
        x = _input(batch_size, self.size, self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model = self._model_for(batch_size)

        def call() -> object:
            with torch.inference_mode(), self._autocast():
                return model(x)

        return call

    def close(self) -> None:
        self.model = self.source = None  # type: ignore[assignment]


class OnnxRunner(Runner):
    """Export once (TorchScript exporter, `dynamo=False`: the dynamo exporter needs onnxscript)
    with a dynamic batch axis, then run with ONNX Runtime at the same thread count as torch."""

    def __init__(self, model: nn.Module, size: tuple[int, int], device: torch.device) -> None:
        import onnxruntime as ort

        self.device, self.size = device, size
        self._tmp = tempfile.TemporaryDirectory(prefix="distillery-onnx-")
        self.path = Path(self._tmp.name) / "model.onnx"
        cpu_model = copy.deepcopy(model).float().cpu().eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                cpu_model,
                (_input(1, size, torch.device("cpu")),),
                str(self.path),
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
            )
        del cpu_model
        self.requested = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if device.type == "cuda"
            else ["CPUExecutionProvider"]
        )
        self._ort = ort
        self.session = self._session()
        #: What ONNX Runtime actually runs on (it falls back to the CPU silently).
        self.providers = list(self.session.get_providers())
        self.on_cuda = self.providers[0] == "CUDAExecutionProvider"
        self.note = f"onnxruntime {ort.__version__}, " + provider_label(device.type, self.providers)
        if self.on_cuda:
            self.note += ", IOBinding (device input/output, no host copies timed)"

    def _session(self):  # noqa: ANN202
        opts = self._ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        return self._ort.InferenceSession(str(self.path), opts, providers=self.requested)

    def prepare(self, batch_size: int) -> Callable[[], object]:
        session = self.session
        if not self.on_cuda:
            x = {"image": _input(batch_size, self.size, torch.device("cpu")).numpy()}
            return lambda: session.run(None, x)
        # IOBinding: input and output stay in CUDA memory that torch owns
        import numpy as np

        index = self.device.index if self.device.index is not None else 0
        x_t = _input(batch_size, self.size, self.device).contiguous()
        classes = int(session.get_outputs()[0].shape[1])
        y_t = torch.empty((batch_size, classes, *self.size), device=self.device)
        binding = session.io_binding()
        binding.bind_input("image", "cuda", index, np.float32, tuple(x_t.shape), x_t.data_ptr())
        binding.bind_output("logits", "cuda", index, np.float32, tuple(y_t.shape), y_t.data_ptr())

        def call() -> object:
            session.run_with_iobinding(binding)
            return y_t  # the bound tensors live as long as the callable

        return call

    def memory(self, batch_size: int) -> tuple[float | None, str]:
        """ONNX Runtime keeps an arena, so a warm session needs no new memory: measure a fresh
        session's creation plus its first run instead (this includes its copy of the weights)."""
        x = {"image": _input(batch_size, self.size, torch.device("cpu")).numpy()}
        if self.device.type == "cuda":
            return None, "not measured for onnxruntime on a GPU"
        mb, method = peak_memory_mb(lambda: self._session().run(None, x), self.device)
        return mb, f"{method}; fresh session + first run, includes its copy of the weights"

    def close(self) -> None:
        self.session = None
        self._tmp.cleanup()


def provider_label(device_type: str, providers: list[str]) -> str:
    """The provider ONNX Runtime runs on (the first of ``session.get_providers()``), and
    whether that is a fall-back from the GPU asked for."""
    label = providers[0] if providers else "no provider"
    if device_type == "cuda" and label != "CUDAExecutionProvider":
        label += " (CUDA asked for; onnxruntime fell back: timed on the CPU)"
    return label


def make_runner(
    model: nn.Module, variant: Variant, size: tuple[int, int], device: torch.device
) -> Runner:
    if variant.runtime == "onnx":
        return OnnxRunner(model, size, device)
    return TorchRunner(model, variant, size, device)
