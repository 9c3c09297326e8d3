"""Give a .tflite a 'serving_default' SignatureDef (ai-edge-quantizer's calibration needs one).

usage: python add_signature.py IN.tflite OUT.tflite   (needs ai-edge-litert + flatbuffers)
"""

import sys

import flatbuffers
from ai_edge_litert import schema_py_generated as schema


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        model = schema.ModelT.InitFromPackedBuf(f.read(), 0)
    graph = model.subgraphs[0]

    def tensor_map(i: int) -> schema.TensorMapT:
        tm = schema.TensorMapT()
        tm.name = graph.tensors[i].name.decode().split(":")[0]
        tm.tensorIndex = i
        return tm

    sig = schema.SignatureDefT()
    sig.signatureKey = "serving_default"
    sig.subgraphIndex = 0
    sig.inputs = [tensor_map(i) for i in graph.inputs]
    sig.outputs = [tensor_map(i) for i in graph.outputs]
    model.signatureDefs = [sig]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with open(dst, "wb") as f:
        f.write(builder.Output())
    print("wrote", dst, "inputs", [t.name for t in sig.inputs], "outputs", [t.name for t in sig.outputs])


if __name__ == "__main__":
    main()
