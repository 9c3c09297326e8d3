"""LiteRT (TFLite) interpreters: backend choice, threads and accelerator delegates.

LiteRT (`ai_edge_litert`) is preferred: its XNNPACK delegate runs int8 models fast. Where it has no
wheel (32-bit Raspberry Pi OS) the older `tflite_runtime` is used instead, which runs int8 far slower.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from edge.vision.errors import DelegateUnavailableError, ModelLoadError

log = logging.getLogger(__name__)


def limit_blas_threads(threads: int = 1) -> None:
    """Keep numpy's BLAS (gallery matching) to one thread: the interpreters already use the cores,
    and a multi-threaded BLAS contending with them ran a 10k-entry match 40x slower (bench/match_scaling.py).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


class Delegate(StrEnum):
    """Where a model's operations run."""

    XNNPACK = "xnnpack"  # CPU, LiteRT's default delegate
    EDGETPU = "edgetpu"  # Coral Edge TPU (model must be compiled by edgetpu_compiler to benefit)
    GPU = "gpu"  # OpenCL/OpenGL GPU delegate (Jetson, Mali)
    CPU = "cpu"  # reference kernels, no delegate at all


DEFAULT_DELEGATE_LIBRARIES = {
    Delegate.EDGETPU: "libedgetpu.so.1",
    Delegate.GPU: "libtensorflowlite_gpu_delegate.so",
}


@dataclass(frozen=True)
class RuntimeConfig:
    """How interpreters are built: threads, delegate, and what to do when the delegate is missing."""

    num_threads: int = 2
    delegate: Delegate = Delegate.XNNPACK
    delegate_library: str | None = None  # overrides DEFAULT_DELEGATE_LIBRARIES
    fallback_to_cpu: bool = False  # a missing delegate library: fall back (True) or refuse (False)

    def library(self) -> str | None:
        return self.delegate_library or DEFAULT_DELEGATE_LIBRARIES.get(self.delegate)


@dataclass(frozen=True)
class Backend:
    """An importable TFLite runtime."""

    name: str
    version: str
    interpreter: Callable[..., Any]
    load_delegate: Callable[..., Any]
    op_resolver: Any  # the backend's OpResolverType enum


def select_backend() -> Backend:
    """LiteRT if installed, else tflite_runtime; neither is a clear error."""
    from importlib import metadata

    try:
        from ai_edge_litert import interpreter as litert

        return Backend("ai_edge_litert", metadata.version("ai-edge-litert"), litert.Interpreter,
                       litert.load_delegate, litert.OpResolverType)
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflr

        return Backend("tflite_runtime", metadata.version("tflite-runtime"), tflr.Interpreter,
                       tflr.load_delegate, tflr.OpResolverType)
    except ImportError:
        raise ModelLoadError(
            "no TFLite runtime: install ai-edge-litert (x86_64, aarch64) or tflite-runtime (armv7l)"
        ) from None


class TfliteModel:
    """One interpreter over a verified model's bytes, with its input and output tensors described."""

    def __init__(self, content: bytes, name: str, config: RuntimeConfig, backend: Backend | None = None):
        self.name = name
        self.backend = backend or select_backend()
        self._content = content  # the interpreter reads from this buffer; keep it alive
        delegates, self.delegate = self._delegates(config)
        resolver = (self.backend.op_resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                    if config.delegate is Delegate.CPU else self.backend.op_resolver.AUTO)
        try:
            self._it = self.backend.interpreter(
                model_content=content, num_threads=config.num_threads,
                experimental_delegates=delegates or None, experimental_op_resolver_type=resolver)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"{name}: the runtime refused the model: {exc}") from None
        self.inputs = tuple(self._it.get_input_details())
        self.outputs = tuple(self._it.get_output_details())

    def _delegates(self, config: RuntimeConfig) -> tuple[list[Any], Delegate]:
        library = config.library()
        if library is None:
            return [], config.delegate
        try:
            ctypes.CDLL(library)  # probe first: a failed load_delegate leaves noise on stderr
            return [self.backend.load_delegate(library)], config.delegate
        except (OSError, ValueError) as exc:
            if not config.fallback_to_cpu:
                raise DelegateUnavailableError(config.delegate, library, str(exc)) from None
            log.warning("delegate %s unavailable (%s: %s); %s falls back to CPU (XNNPACK)",
                        config.delegate, library, exc, self.name)
            return [], Delegate.XNNPACK

    def input_view(self, index: int = 0) -> np.ndarray:
        """A writable view of an input tensor; drop it before invoke() (the runtime insists)."""
        view: np.ndarray = self._it.tensor(self.inputs[index]["index"])()
        return view

    def output(self, index: int = 0) -> np.ndarray:
        """A copy of an output tensor after invoke()."""
        out: np.ndarray = self._it.get_tensor(self.outputs[index]["index"])
        return out

    def output_view(self, index: int = 0) -> np.ndarray:
        """A view of an output tensor, no copy; drop it before the next invoke()."""
        view: np.ndarray = self._it.tensor(self.outputs[index]["index"])()
        return view

    def invoke(self) -> None:
        self._it.invoke()
