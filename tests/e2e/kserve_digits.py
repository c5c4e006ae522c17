"""A real KServe ModelServer serving a scikit-learn classifier trained at start-up on the digits
data bundled with scikit-learn (8x8 images, 64 integer pixels in 0..16, 10 classes).

Open Inference Protocol v2 REST at /v2/models/digits/infer and KServe v1 at
/v1/models/digits:predict; both answer class probabilities. The training split is every
other row (seeded), so the test clients can send the held-out rows as benign traffic.

usage: python3 kserve_digits.py --http_port N [--grpc_port M]
"""

import argparse
import uuid

import kserve
import numpy as np
from kserve import InferOutput, InferRequest, InferResponse
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression


class Digits(kserve.Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.clf = None
        self.load()

    def load(self) -> bool:
        x, y = load_digits(return_X_y=True)
        # Same split as the clients: even rows train, odd rows are held out.
        self.clf = LogisticRegression(max_iter=5000).fit(x[::2] / 16.0, y[::2])
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        if isinstance(payload, InferRequest):
            x = payload.inputs[0].as_numpy().reshape(-1, 64).astype(np.float64)
            p = self.clf.predict_proba(x / 16.0).astype(np.float32)
            out = InferOutput(name="probabilities", shape=list(p.shape), datatype="FP32")
            out.set_data_from_numpy(p, binary_data=False)
            return InferResponse(
                model_name=self.name, infer_outputs=[out], response_id=payload.id or str(uuid.uuid4())
            )
        x = np.asarray(payload["instances"], dtype=np.float64).reshape(-1, 64)
        return {"predictions": self.clf.predict_proba(x / 16.0).tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    args, _ = parser.parse_known_args()
    kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, workers=1
    ).start([Digits("digits")])
