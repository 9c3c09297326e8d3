"""Rebuild dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1: CC0 weights, 128-d)
in TensorFlow from the tfjs copy of its weights in the npm package @vladmandic/face-api, following
face-api.js's FaceRecognitionNet graph, and export a float32 .tflite (1x150x150x3 RGB in, 1x128 out).

usage (a venv with tensorflow-cpu): python build_dlib_resnet.py FACE_API_PACKAGE_DIR OUT.tflite
Model input: (rgb - [122.782, 117.001, 104.298]) / 255.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf


def load_weights(pkg: Path) -> dict[str, np.ndarray]:
    manifest = json.loads((pkg / "model/face_recognition_model-weights_manifest.json").read_text())
    weights = {}
    for group in manifest:
        raw = b"".join((pkg / "model" / p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            n = int(np.prod(w["shape"]))
            q = w.get("quantization")
            if q:  # tfjs affine uint8: value = q * scale + min
                a = np.frombuffer(raw, np.uint8, n, off).astype(np.float32) * q["scale"] + q["min"]
                off += n
            else:
                a = np.frombuffer(raw, np.float32, n, off).copy()
                off += 4 * n
            weights[w["name"]] = a.reshape(w["shape"])
        if off != len(raw):
            raise SystemExit(f"weights manifest does not cover the .bin exactly ({off} != {len(raw)})")
    return weights


def main() -> None:
    pkg, dst = Path(sys.argv[1]), Path(sys.argv[2])
    W = load_weights(pkg)

    def conv(x, p, stride, relu, padding):
        y = tf.nn.conv2d(x, W[f"{p}/conv/filters"], stride, padding) + W[f"{p}/conv/bias"]
        y = y * W[f"{p}/scale/weights"] + W[f"{p}/scale/biases"]
        return tf.nn.relu(y) if relu else y

    def residual(x, p):
        y = conv(x, f"{p}/conv1", 1, True, "SAME")
        y = conv(y, f"{p}/conv2", 1, False, "SAME")
        return tf.nn.relu(y + x)

    def residual_down(x, p):
        y = conv(x, f"{p}/conv1", 2, True, "VALID")
        y = conv(y, f"{p}/conv2", 1, False, "SAME")
        pooled = tf.nn.avg_pool2d(x, 2, 2, "VALID")
        dh, dw = pooled.shape[1] - y.shape[1], pooled.shape[2] - y.shape[2]
        if dh or dw:  # face-api.js appends zero rows/cols at the bottom/right
            y = tf.pad(y, [[0, 0], [0, dh], [0, dw], [0, 0]])
        dc = y.shape[3] - pooled.shape[3]
        if dc:  # zero-pad the shortcut's channels
            pooled = tf.pad(pooled, [[0, 0], [0, 0], [0, 0], [0, dc]])
        return tf.nn.relu(pooled + y)

    @tf.function(input_signature=[tf.TensorSpec([1, 150, 150, 3], tf.float32, name="input")])
    def net(x):
        y = conv(x, "conv32_down", 2, True, "VALID")
        y = tf.nn.max_pool2d(y, 3, 2, "VALID")
        for p in ["conv32_1", "conv32_2", "conv32_3"]:
            y = residual(y, p)
        y = residual_down(y, "conv64_down")
        for p in ["conv64_1", "conv64_2", "conv64_3"]:
            y = residual(y, p)
        y = residual_down(y, "conv128_down")
        for p in ["conv128_1", "conv128_2"]:
            y = residual(y, p)
        y = residual_down(y, "conv256_down")
        for p in ["conv256_1", "conv256_2"]:
            y = residual(y, p)
        y = residual_down(y, "conv256_down_out")
        y = tf.reduce_mean(y, axis=[1, 2])
        return {"embedding": tf.matmul(y, W["fc"])}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([net.get_concrete_function()], net)
    dst.write_bytes(converter.convert())
    print("wrote", dst, dst.stat().st_size)


if __name__ == "__main__":
    main()
