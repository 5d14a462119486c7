"""GPU sample worker: a model of configurable size with random weights on the GPU.

Serves /health (model size, slice, load time, memory the allocator holds),
/v1/completions and /v1/bandwidth?mb=N (copy bandwidths host to device,
pinned and pageable, and device to host, for bench/gpu_restore.ts).
Honours the platform's environment: PORT, HOST, CUDA_VISIBLE_DEVICES (set
by the node agent) and INFERX_VRAM_MB (its vRAM slice: the process may not
allocate beyond it). Model size: MODEL_MB (default: 60% of the slice). WEIGHTS_FILE: load the weights from
this file (raw fp16) when it exists, else make them and write it. Needs
PyTorch with CUDA.
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

try:
    import torch
except ImportError:
    sys.exit("gpu worker: PyTorch is not installed (pip install torch)")

if not torch.cuda.is_available():
    sys.exit("gpu worker: no CUDA device is visible (CUDA_VISIBLE_DEVICES=%s)" % os.environ.get("CUDA_VISIBLE_DEVICES"))

DEVICE = torch.device("cuda:0")
TOTAL_MB = torch.cuda.get_device_properties(DEVICE).total_memory // (1024 * 1024)
SLICE_MB = int(os.environ.get("INFERX_VRAM_MB") or TOTAL_MB)
if SLICE_MB < TOTAL_MB:
    # The slice is a hard cap for this process's allocator.
    torch.cuda.set_per_process_memory_fraction(SLICE_MB / TOTAL_MB, DEVICE)
MODEL_MB = int(os.environ.get("MODEL_MB") or SLICE_MB * 0.6)
HIDDEN = 4096
VOCAB = 32000

# Layers of HIDDEN x HIDDEN fp16 weights filling MODEL_MB, seeded so answers are reproducible.
layer_mb = HIDDEN * HIDDEN * 2 // (1024 * 1024)
layers = max(1, MODEL_MB // layer_mb)
torch.manual_seed(int(os.environ.get("MODEL_SEED", "7")))
WEIGHTS_FILE = os.environ.get("WEIGHTS_FILE")
t0 = time.perf_counter()
if WEIGHTS_FILE and os.path.exists(WEIGHTS_FILE):
    # As a model server loads its weights: from a file (mapped, read through
    # the page cache) to the GPU.
    n = HIDDEN * HIDDEN
    flat = torch.from_file(WEIGHTS_FILE, shared=False, size=layers * n + VOCAB * HIDDEN, dtype=torch.float16)
    WEIGHTS = [flat[i * n:(i + 1) * n].view(HIDDEN, HIDDEN).to(DEVICE) for i in range(layers)]
    EMBED = flat[layers * n:].view(VOCAB, HIDDEN).to(DEVICE)
    del flat
else:
    WEIGHTS = [torch.randn(HIDDEN, HIDDEN, dtype=torch.float16, device=DEVICE) / HIDDEN**0.5 for _ in range(layers)]
    EMBED = torch.randn(VOCAB, HIDDEN, dtype=torch.float16, device=DEVICE) / HIDDEN**0.5
    if WEIGHTS_FILE:  # made here, kept for the next start
        with open(WEIGHTS_FILE + ".tmp", "wb") as out:
            for w in WEIGHTS + [EMBED]:
                out.write(w.cpu().numpy().tobytes())
        os.replace(WEIGHTS_FILE + ".tmp", WEIGHTS_FILE)
torch.cuda.synchronize()
LOAD_S = time.perf_counter() - t0
print("gpu worker: %d layers, %d MB on %s in %.2f s" % (layers, layers * layer_mb, torch.cuda.get_device_name(DEVICE), LOAD_S), flush=True)


def generate(prompt: str, max_tokens: int) -> list:
    """Greedy decoding through the random layers: deterministic for a prompt."""
    ids = [b % VOCAB for b in prompt.encode()] or [0]
    out = []
    with torch.no_grad():
        x = EMBED[torch.tensor(ids[-8:], device=DEVICE)].mean(0)
        for _ in range(max_tokens):
            for w in WEIGHTS:
                x = torch.tanh(w @ x)
            token = int(torch.argmax(EMBED @ x))
            out.append(token)
            x = EMBED[token]
    return out


def _copy_gbps(dst, src, mb: int) -> float:
    """GB/s of copying `src` into `dst` (`mb` megabytes), the best of three after a warm-up."""
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return mb / 1024 / best


def bandwidth(mb: int) -> dict:
    """Copy bandwidths (GB/s) of a buffer of `mb` megabytes: host to device from pinned and
    from pageable memory, and device to pinned host memory."""
    pageable = torch.empty(mb * 1024 * 1024, dtype=torch.uint8)
    pinned = pageable.pin_memory()
    dev = torch.empty_like(pinned, device=DEVICE)
    out = {
        "mb": mb,
        "h2d_gbps": _copy_gbps(dev, pinned, mb),
        "h2d_pageable_gbps": _copy_gbps(dev, pageable, mb),
        "d2h_gbps": _copy_gbps(pinned, dev, mb),
    }
    del pageable, pinned, dev
    torch.cuda.empty_cache()
    return out


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            return self._send(200, {
                "status": "ok",
                "model_mb": layers * layer_mb,
                "slice_mb": SLICE_MB,
                "load_s": LOAD_S,
                "reserved_mb": torch.cuda.memory_reserved(DEVICE) // (1024 * 1024),
            })
        if self.path.startswith("/v1/bandwidth"):
            query = parse_qs(urlparse(self.path).query)
            try:
                mb = int(query.get("mb", ["1024"])[0])
                if not 1 <= mb <= 65536:
                    raise ValueError
            except ValueError:
                return self._send(400, {"error": {"message": "mb must be an integer in 1..65536"}})
            return self._send(200, bandwidth(mb))
        self._send(404, {"error": {"message": "No route for " + self.path}})

    def do_POST(self) -> None:
        if self.path != "/v1/completions":
            return self._send(404, {"error": {"message": "No route for " + self.path}})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
            prompt = body["prompt"]
            max_tokens = int(body.get("max_tokens", 16))
            if not isinstance(prompt, str) or not 1 <= max_tokens <= 1024:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return self._send(400, {"error": {"message": "prompt (string) and max_tokens (1..1024) are required"}})
        tokens = generate(prompt, max_tokens)
        self._send(200, {
            "object": "text_completion",
            "model": os.environ.get("MODEL_NAME", "gpu-random"),
            "choices": [{"index": 0, "text": " ".join(map(str, tokens)), "finish_reason": "length"}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(tokens)},
        })

    def log_message(self, *args) -> None:
        pass


ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))), Handler).serve_forever()
