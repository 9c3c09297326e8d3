"""Write models/MANIFEST.json for the .tflite files present in models/: sha256, source packages,
licence, input/output spec, anchors (detectors); for embedders also the alignment template, normalisation,
metric, threshold, the floor with the calibration run it came from, and the training data and its licence.

usage: python write_manifest.py MODELS_DIR
This file is the one place the models' facts are written down; the runtime reads only the JSON.
An embedder's floor is read from MODELS_DIR/calibration/<id>.json, a calibration record written by
`edge-fleet calibrate` (docs/embedders.md); an embedder without one is declared uncalibrated, floor 1.0,
and no deployment can be issued for it until it is calibrated.
"""

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

MEDIAPIPE = {"registry": "npm", "name": "@mediapipe/face_detection", "version": "0.4.1657300184"}
FACE_API = {"registry": "npm", "name": "@vladmandic/face-api", "version": "1.7.15"}
FACE_API_WEIGHTS = {
    **FACE_API, "path": "package/model/face_recognition_model.bin",
    "sha256": "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589",
}
BLAZEFACE_NOTE = ("MediaPipe BlazeFace; 6 keypoints: right eye, left eye, nose tip, mouth centre, "
                  "right ear, left ear")
DLIB_LICENCE = ("CC0-1.0 (dlib_face_recognition_resnet_model_v1 weights, Davis King); "
                "graph after face-api.js (MIT)")
# Where the dlib ResNet expects image-left eye, image-right eye, nose tip and mouth centre in its
# 150x150 input, fitted to dlib's own chip (get_face_chip, size 150, padding 0.25, from its 5-point shape
# predictor): the mean position of BlazeFace's four points mapped into that chip, over 93 devset faces
# (bench/gate_and_alignment.py, which prints this list). The earlier template, dlib's mean-face positions
# [[47.6, 46.6], [100.5, 46.6], [74.0, 76.6], [74.0, 105.4]], put BlazeFace's points 1-1.5 px off.
DLIB_TEMPLATE = [[46.5, 45.2], [100.9, 45.7], [73.3, 76.2], [73.9, 104.6]]
DLIB_MEAN = [122.782, 117.001, 104.298]
# Operating threshold on the cosine score, measured by bench/accuracy.py on the devset: the same person
# (3 photos of Barack Obama) scores >= 0.946; different people mostly < 0.90, but this model crowds everyone
# into 0.70-0.97 and a few pairs of different people reach 0.93-0.94 (docs/vision.md). dlib's own rule
# (distance 0.6, ~cosine 0.91) lets those through, so the default sits above them. The floor is not chosen
# here: it comes from the embedder's calibration record (floor_from_calibration). Deployments may raise the
# threshold; none may go below the floor.
DLIB_THRESHOLD = 0.94
DLIB_TRAINING = {
    "description": "about 3 million faces of 7,485 identities (none of LFW's): FaceScrub, the VGG Face dataset "
                   "and images Davis King scraped from the web, cleaned by hand (dlib-models README)",
    "licence": "not stated by the publisher; FaceScrub is offered for non-commercial research, VGG Face under "
               "its own terms, the scraped images under none: a force's legal review must accept it "
               "(models/LICENSES.md)",
}
# The floor rule: the lowest threshold from which up a passer-by's face, searched against a list of
# FLOOR_ENTRIES entries (the smallest list size the accuracy harness reports), is predicted by the calibration's
# impostor tail to be falsely matched at most FLOOR_TARGET times per 1,000 passers-by: 1000 (1 - (1 - p)^N), as
# provisioning.accuracy.stats.passer_by. Larger lists need higher thresholds; the fleet policy checks those.
FLOOR_ENTRIES = 10
FLOOR_TARGET = 1.0
FLOOR_RULE = (f"lowest threshold whose predicted false matches per 1,000 passers-by against a {FLOOR_ENTRIES}-entry "
              f"list (the calibration's impostor tail model) are <= {FLOOR_TARGET:g}")
UNCALIBRATED_FLOOR = 1.0  # edge.vision.manifest.UNCALIBRATED_FLOOR: fail closed

DETECTORS = {
    "blazeface-full-range": {
        "file": "face_detection_full_range.tflite", "size": 192, "strides": [4], "per_cell": [1],
        "src_sha256": "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
        "note": "faces up to ~5 m from the camera; used on whole frames and tiles",
    },
    "blazeface-short-range": {
        "file": "face_detection_short_range.tflite", "size": 128, "strides": [8, 16], "per_cell": [2, 6],
        "src_sha256": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        "note": "faces within ~2 m (selfie range)",
    },
}
EMBEDDERS = {
    "dlib-resnet-v1-int8": ("dlib_resnet_v1_int8.tflite", "int8",
                            "static int8 weights and activations (global min/max calibration); the last "
                            "residual block, mean and FC float with int8 weights (ai-edge-quantizer "
                            "0.10.0); float I/O"),
    "dlib-resnet-v1-dynint8": ("dlib_resnet_v1_dynint8.tflite", "dynint8",
                               "int8 weights, activations quantised at run time (ai-edge-quantizer 0.10.0)"),
    "dlib-resnet-v1-float32": ("dlib_resnet_v1_float32.tflite", "float32",
                               "float32 reference, rebuilt in TensorFlow 2.21 from the face-api.js weights"),
}
DEFAULT_EMBEDDER = "dlib-resnet-v1-int8"
DEFAULT_DETECTOR = "blazeface-full-range"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CalibrationMismatch(SystemExit):
    """A calibration record that does not belong to the model file it would set the floor of."""


def floor_from_calibration(models_dir: Path, mid: str, model_sha256: str) -> dict[str, Any]:
    """The floor and its provenance from MODELS_DIR/calibration/<mid>.json (fields of
    provisioning.accuracy.calibration.CalibrationRecord), or the fail-closed floor when there is none."""
    rel = f"calibration/{mid}.json"
    path = models_dir / rel
    if not path.exists():
        return {"floor": UNCALIBRATED_FLOOR, "floor_from": {"calibration": None, "target": FLOOR_RULE}}
    doc = json.loads(path.read_text())
    if doc["model_id"] != mid or doc["model_sha256"] != model_sha256:
        raise CalibrationMismatch(f"{path}: calibrates {doc['model_id']} {doc['model_sha256'][:16]}, not this "
                                  f"{mid} {model_sha256[:16]}: calibrate it again")
    grid, rates = doc["grid"], doc["rates"]
    # rates fall with the threshold; the floor is where they stay at or under the target from there up
    floor = None
    for t, p in zip(reversed(grid), reversed(rates), strict=True):
        if 1000 * (1 - (1 - p) ** FLOOR_ENTRIES) > FLOOR_TARGET:
            break
        floor = t
    if floor is None:
        raise CalibrationMismatch(f"{path}: no threshold on its grid meets the floor rule ({FLOOR_RULE})")
    footage = ", ".join(Path(f).name for f in doc["footage"])
    return {"floor": round(float(floor), 3), "floor_from": {
        "calibration": rel, "date": doc["when"], "pairs": doc["pairs"], "target": FLOOR_RULE,
        "data": f"{doc['faces']} faces of unlisted people ({footage}) against {doc['entries']} entries"}}


def main() -> None:
    models_dir = Path(sys.argv[1])
    models = {}
    for mid, d in DETECTORS.items():
        path = models_dir / d["file"]
        if not path.exists():
            continue
        models[mid] = {
            "role": "detector", "file": d["file"], "sha256": sha256(path), "variant": "float32",
            "licence": "Apache-2.0", "note": f"{BLAZEFACE_NOTE}; {d['note']}",
            "source": [{**MEDIAPIPE, "path": f"package/{d['file']}", "sha256": d["src_sha256"]}],
            "input": {"size": d["size"], "layout": "NHWC RGB float32", "mean": [127.5] * 3,
                      "scale": 1 / 127.5},
            "output": {"regressors": [1, d["size"] ** 2 // 16 if d["size"] == 192 else 896, 16],
                       "classificators": "logits, sigmoid gives the face score"},
            "anchors": {"strides": d["strides"], "per_cell": d["per_cell"]},
        }
    for mid, (file, variant, how) in EMBEDDERS.items():
        path = models_dir / file
        if not path.exists():
            continue
        digest = sha256(path)
        match = floor_from_calibration(models_dir, mid, digest)
        models[mid] = {
            "role": "embedder", "file": file, "sha256": digest, "variant": variant,
            "licence": DLIB_LICENCE, "training_data": DLIB_TRAINING, "note": how, "source": [FACE_API_WEIGHTS],
            "input": {"size": 150, "layout": "NHWC RGB float32", "mean": DLIB_MEAN, "scale": 1 / 255},
            "output": {"embedding": [1, 128], "normalisation": "l2"},
            "embedding_size": 128, "metric": "cosine",
            "match": {"threshold": max(DLIB_THRESHOLD, match["floor"]), **match},
            "alignment": {"size": 150, "template": DLIB_TEMPLATE,
                          "points": ["image-left eye", "image-right eye", "nose tip", "mouth centre"]},
        }
    default_embedder = DEFAULT_EMBEDDER if DEFAULT_EMBEDDER in models else "dlib-resnet-v1-float32"
    doc = {"schema": 1, "defaults": {"detector": DEFAULT_DETECTOR, "embedder": default_embedder},
           "models": models}
    (models_dir / "MANIFEST.json").write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote", models_dir / "MANIFEST.json", sorted(models))


if __name__ == "__main__":
    main()
