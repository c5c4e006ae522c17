"""Open Inference Protocol v2 over gRPC, with KServe's own generated stubs: held-out digits
rows sent as ModelInfer calls through Envoy and straight to the model, half with typed
`contents`, half with `raw_input_contents` (little-endian FP32). Prints a JSON summary:
calls compared, responses identical (serialized bytes), rows sent.

usage: python3 grpc_client.py --via 127.0.0.1:ENVOY --direct 127.0.0.1:MODEL_GRPC [--n 10]
"""

import argparse
import json
import sys

import grpc
import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pbg
from sklearn.datasets import load_digits


def request(i: int, row: np.ndarray) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 64])
    req = pb.ModelInferRequest(model_name="digits", id=f"grpc-{i}")
    if i % 2:
        req.raw_input_contents.append(row.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(row.tolist())
    req.inputs.append(tensor)
    return req


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--via", required=True)
    ap.add_argument("--direct", required=True)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--key", default="grpc-client")
    a = ap.parse_args()
    rows = load_digits().data[1::2]
    channels = [grpc.insecure_channel(t) for t in (a.via, a.direct)]
    for ch in channels:  # KServe's gRPC port may come up after its HTTP port
        grpc.channel_ready_future(ch).result(timeout=30)
    stubs = [pbg.GRPCInferenceServiceStub(ch) for ch in channels]
    identical = 0
    for i in range(a.n):
        req = request(i, rows[200 + i])
        via, direct = (
            s.ModelInfer(req, metadata=[("x-api-key", a.key)], timeout=10, wait_for_ready=True)
            for s in stubs
        )
        identical += via.SerializeToString() == direct.SerializeToString()
    json.dump({"compared": a.n, "identical": identical, "rows": a.n}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
