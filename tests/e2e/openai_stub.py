"""An OpenAI-compatible chat and completions server answering from a stand-in language model.

The stand-in has the structure that the published logit-bias attacks exploit (the victim of
tests/data/llm-public is built the same way): a low-rank softmax over an 8,192-token
vocabulary, logits = W h with a 64-dimensional hidden state h that depends on the prompt and
the position, and `logit_bias` added to the logits before the softmax (clamped to
[-100, 100], at most 300 entries). `logprobs` are log_softmax(logits + bias); `top_logprobs`
returns the best alternatives of each generated token. Completions are the stand-in's tokens
as text (word salad). Deterministic: the same request gets the same answer.

    python3 openai_stub.py --http_port 8081
"""

import argparse
import hashlib
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

VOCAB, HIDDEN = 8192, 64
MAX_GENERATED = 64  # tokens actually generated per answer (max_tokens above it is capped)
RNG = np.random.default_rng(7)
W = RNG.normal(size=(VOCAB, HIDDEN)).astype(np.float32) / np.sqrt(HIDDEN)
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "dan"]
TOKENS = [
    " " + "".join(SYLLABLES[(i >> s) % len(SYLLABLES)] for s in (0, 4, 8)[: 1 + i % 3])
    for i in range(VOCAB)
]


def seed_of(text):
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def prompt_text(req):
    if "messages" in req:
        return json.dumps(req["messages"], sort_keys=True)
    return json.dumps(req.get("prompt", ""))


def bias_vector(req):
    b = np.zeros(VOCAB, dtype=np.float32)
    for k, v in list((req.get("logit_bias") or {}).items())[:300]:
        i = int(k)
        if 0 <= i < VOCAB:
            b[i] = max(-100.0, min(100.0, float(v)))
    return b


def generate(req, chat):
    seed = seed_of(prompt_text(req))
    h0 = np.random.default_rng(seed).normal(size=HIDDEN).astype(np.float32)
    bias = bias_vector(req)
    temp = float(req.get("temperature", 1.0) or 0.0)
    n_tokens = max(1, min(int(req.get("max_tokens") or 16), MAX_GENERATED))
    k = int(req.get("top_logprobs") or 0) if chat else int(req.get("logprobs") or 0)
    k = min(k, 20 if chat else 5)
    rng = np.random.default_rng(seed ^ 0x5EED)
    out = []
    for pos in range(n_tokens):
        h = h0 + 0.3 * np.sin(pos + np.arange(HIDDEN, dtype=np.float32))
        z = W @ h + bias
        lp = z - (np.log(np.exp(z - z.max()).sum()) + z.max())
        if temp <= 0:
            tok = int(np.argmax(lp))
        else:
            p = np.exp((lp - lp.max()) / temp)
            tok = int(rng.choice(VOCAB, p=p / p.sum()))
        top = np.argsort(-lp)[:k] if k > 0 else []
        out.append((tok, float(lp[tok]), [(int(t), float(lp[t])) for t in top]))
    return out


def chat_body(req, gen, model):
    text = "".join(TOKENS[t] for t, _, _ in gen)
    choice = {"index": 0, "message": {"role": "assistant", "content": text},
              "finish_reason": "length"}
    if req.get("logprobs"):
        choice["logprobs"] = {"content": [
            {"token": TOKENS[t], "logprob": lp,
             "top_logprobs": [{"token": TOKENS[a], "logprob": b} for a, b in top]}
            for t, lp, top in gen]}
    return {"object": "chat.completion", "choices": [choice]}


def completion_body(req, gen, model):
    text = "".join(TOKENS[t] for t, _, _ in gen)
    choice = {"index": 0, "text": text, "finish_reason": "length"}
    if req.get("logprobs"):
        choice["logprobs"] = {
            "tokens": [TOKENS[t] for t, _, _ in gen],
            "token_logprobs": [lp for _, lp, _ in gen],
            "top_logprobs": [{TOKENS[a]: b for a, b in top} for _, _, top in gen]}
    return {"object": "text_completion", "choices": [choice]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def reply_stream(self, body, chat):
        """The answer as server-sent events: one chunk per token, then usage, then [DONE]."""
        events = []
        choice = body["choices"][0]
        lps = (choice.get("logprobs") or {}).get("content") or []
        text_tokens = [lp["token"] for lp in lps] or [choice["message"]["content"]] if chat \
            else [choice["text"]]
        for i, tok in enumerate(text_tokens):
            c = {"index": 0, "delta": {"content": tok}} if chat else {"index": 0, "text": tok}
            if chat and i < len(lps):
                c["logprobs"] = {"content": [lps[i]]}
            events.append({"id": body["id"], "object": "chat.completion.chunk", "choices": [c]})
        events.append({"id": body["id"], "choices": [], "usage": body["usage"]})
        data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        raw = data.encode()
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok"})
        self.reply(404, {"error": {"message": "not found"}})

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        try:
            req = json.loads(self.rfile.read(n))
        except ValueError:
            return self.reply(400, {"error": {"message": "body is not JSON"}})
        chat = self.path == "/v1/chat/completions"
        if not chat and self.path != "/v1/completions":
            return self.reply(404, {"error": {"message": "not found"}})
        model = req.get("model", "stand-in")
        gen = generate(req, chat)
        body = (chat_body if chat else completion_body)(req, gen, model)
        digest = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:24]
        body.update({"id": ("chatcmpl-" if chat else "cmpl-") + digest,
                     "created": 1772524800, "model": model})
        prompt_tokens = max(1, len(prompt_text(req)) // 4)
        body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": len(gen),
                         "total_tokens": prompt_tokens + len(gen)}
        if req.get("stream"):
            return self.reply_stream(body, chat)
        self.reply(200, body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http_port", type=int, required=True)
    ap.add_argument("--grpc_port", type=int, default=0, help="ignored (no gRPC API)")
    args = ap.parse_args()
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", args.http_port), Handler).serve_forever()


if __name__ == "__main__":
    main()
