"""A model server on PyTorch (CPU): a small character-level transformer
language model whose weights are loaded from a file, served over HTTP.

Routes: GET /health, GET /v1/models, POST /v1/completions
({"prompt": str, "max_tokens": int}, greedy decoding). Every answer carries
x-worker-requests, the count of completions this process has served.

Env: PORT (8000), HOST (127.0.0.1), TORCH_WEIGHTS (weights.pt beside this
file), MODEL_NAME (tiny-lm), TORCH_THREADS (1).

The weights are not downloaded: `python3 worker.py --generate PATH` writes
them from a fixed seed (the same bytes every time); a worker that finds no
weights file generates it first.
"""

import ctypes
import gc
import io
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

T0 = time.monotonic()
import torch  # noqa: E402  (the import is most of a fresh start)
from torch import nn  # noqa: E402

VOCAB = 256  # bytes
CONTEXT = 256
MAX_TOKENS = 256


class TinyLM(nn.Module):
    """Byte-level transformer decoder: 6 layers, 6 heads, width 384 (10.7 M parameters)."""

    def __init__(self, d=384, heads=6, layers=6, ff=1536):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(CONTEXT, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, layers)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, ids):
        n = ids.shape[1]
        causal = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
        x = self.tok(ids) + self.pos(torch.arange(n).unsqueeze(0))
        return self.head(self.norm(self.body(x, mask=causal)))


def generate_weights(path):
    """Writes the model's weights from a fixed seed (atomically: temp file, then rename)."""
    torch.manual_seed(0)
    model = TinyLM()
    buf = io.BytesIO()  # saved to memory: the archive then names no file, same bytes every time
    torch.save(model.state_dict(), buf)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def load_model(path):
    if not os.path.exists(path):
        print(f"no weights at {path}: generating them (seed 0)", flush=True)
        try:
            generate_weights(path)
        except OSError as err:
            # A checkout this user may not write: one line that says what to do, not a traceback.
            sys.exit(f"cannot write the weights to {path} ({err.strerror}): make them once with "
                     "`deno task torch-weights`, or set TORCH_WEIGHTS to a writable path")
    model = TinyLM()
    state = torch.load(path, map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    # The loaded copy of the weights is garbage now: hand its memory back to
    # the system, so a snapshot of this process does not carry it.
    del state
    gc.collect()
    trim_heap()
    return model


def trim_heap():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass  # not glibc


@torch.no_grad()
def complete(model, prompt, max_tokens):
    ids = list(prompt.encode("utf-8"))[-CONTEXT:] or [32]
    out = []
    for _ in range(max_tokens):
        logits = model(torch.tensor([ids[-CONTEXT:]]))[0, -1]
        nxt = int(torch.argmax(logits))
        ids.append(nxt)
        out.append(nxt)
    return bytes(out).decode("utf-8", errors="replace")


class Server:
    def __init__(self, model, name):
        self.model = model
        self.name = name
        self.served = 0
        self.lock = threading.Lock()


def handler_for(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-worker-requests", str(server.served))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.answer(200, {"status": "ok", "model": server.name})
            elif self.path == "/v1/models":
                self.answer(200, {"object": "list", "data": [{"id": server.name, "object": "model"}]})
            else:
                self.answer(404, {"error": {"message": f"No route for GET {self.path}"}})

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path != "/v1/completions":
                self.answer(404, {"error": {"message": f"No route for POST {self.path}"}})
                return
            try:
                req = json.loads(raw or b"{}")
                prompt = req.get("prompt", "")
                max_tokens = req.get("max_tokens", 16)
                if not isinstance(prompt, str):
                    raise ValueError("prompt must be a string")
                if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
                    raise ValueError(f"max_tokens must be an integer from 1 to {MAX_TOKENS}")
            except ValueError as err:
                self.answer(400, {"error": {"message": str(err), "type": "invalid_request_error"}})
                return
            with server.lock:
                text = complete(server.model, prompt, max_tokens)
                server.served += 1
            self.answer(200, {
                "object": "text_completion",
                "model": server.name,
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                "usage": {"completion_tokens": max_tokens},
            })

    return Handler


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--generate":
        generate_weights(sys.argv[2])
        return
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    here = os.path.dirname(os.path.abspath(__file__))
    weights = os.environ.get("TORCH_WEIGHTS", os.path.join(here, "weights.pt"))
    name = os.environ.get("MODEL_NAME", "tiny-lm")
    model = load_model(weights)
    complete(model, "warm", 1)  # first forward pass allocates its buffers
    server = Server(model, name)
    httpd = ThreadingHTTPServer(
        (os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))),
        handler_for(server),
    )
    httpd.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown).start())
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params / 1e6:.1f} M parameters from {weights}, ready in "
          f"{time.monotonic() - T0:.2f} s on {httpd.server_address[0]}:{httpd.server_address[1]}",
          flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
