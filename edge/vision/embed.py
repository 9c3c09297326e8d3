"""Face embedding: an aligned face in, an L2-normalised vector out."""

from __future__ import annotations

import numpy as np

from edge.vision.errors import ModelLoadError
from edge.vision.manifest import ModelManifest, ModelSpec
from edge.vision.runtime import RuntimeConfig, TfliteModel


class Embedder:
    """Runs the embedding model (float or int8 I/O) on one aligned face at a time."""

    def __init__(self, spec: ModelSpec, content: bytes, runtime: RuntimeConfig):
        if spec.embedding_size is None or spec.alignment is None:
            raise ModelLoadError(
                f"{spec.id}: MANIFEST.json gives no embedding size or alignment: not an embedder")
        self.spec = spec
        self.model = TfliteModel(content, spec.id, runtime)
        inp, out = self.model.inputs[0], self.model.outputs[0]
        self.size = int(inp["shape"][1])
        self.dim = int(np.prod(out["shape"][1:]))
        if self.size != spec.alignment.size or self.dim != spec.embedding_size:
            raise ModelLoadError(f"{spec.id}: model input {self.size} px / output {self.dim}-d differ from "
                                 "MANIFEST.json")
        self._in_dtype = np.dtype(inp["dtype"])
        self._in_q = inp["quantization"]
        self._out_dtype = np.dtype(out["dtype"])
        self._out_q = out["quantization"]
        self._mean = np.array(spec.input_mean, np.float32)
        self._scale = np.float32(spec.input_scale)
        self._staging = np.zeros((self.size, self.size, 3), np.float32)

    @classmethod
    def from_manifest(cls, manifest: ModelManifest, runtime: RuntimeConfig,
                      model_id: str | None = None) -> Embedder:
        mid = model_id or manifest.default_embedder
        return cls(manifest.spec(mid), manifest.verified_bytes(mid), runtime)

    def embed_into(self, face: np.ndarray, out: np.ndarray) -> None:
        """Write the unit-length embedding of an aligned RGB face into `out` (float32, dim)."""
        x = self._staging
        np.subtract(face, self._mean, out=x, casting="unsafe")
        np.multiply(x, self._scale, out=x)
        view = self.model.input_view()
        if self._in_dtype == np.float32:
            view[0] = x
        else:  # fully quantised input
            sc, zp = self._in_q
            info = np.iinfo(self._in_dtype)
            np.divide(x, sc, out=x)
            np.add(x, zp, out=x)
            np.rint(x, out=x)
            np.clip(x, info.min, info.max, out=x)
            view[0] = x
        del view
        self.model.invoke()
        y = self.model.output_view()[0].reshape(-1)
        if self._out_dtype == np.float32:
            out[:] = y
        else:
            sc, zp = self._out_q
            np.subtract(y, zp, out=out, dtype=np.float32)  # in float: int8 arithmetic would wrap
            np.multiply(out, sc, out=out)
        del y
        norm = float(np.linalg.norm(out))
        if norm > 0:
            out /= norm

    def embed(self, face: np.ndarray) -> np.ndarray:
        out = np.empty(self.dim, np.float32)
        self.embed_into(face, out)
        return out

    def release(self) -> None:
        """Zero the staging buffer, the input tensor (the last face) and the output tensor (its embedding)."""
        self._staging.fill(0)
        view = self.model.input_view()
        view.fill(0)
        del view
        out = self.model.output_view()
        out.fill(0)
        del out
