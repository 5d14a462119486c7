"""A model server on PyTorch (CPU): a small character-level transformer
language model whose weights are loaded from a file, served over HTTP with
OpenAI's completion routes.

Routes: GET /health, GET /v1/models, POST /v1/completions ("prompt": a string
or a list of strings, each answered by its own `n` choices) and POST
/v1/chat/completions ("messages"), both with max_tokens (16), temperature
(0: greedy, the default; otherwise sampled, from `seed` when given), n, stop,
stream (server-sent events, with stream_options.include_usage). Tokens are
bytes of UTF-8. Every answer carries x-worker-requests, the count of
completions this process has served.

Env: PORT (8000), HOST (127.0.0.1), TORCH_WEIGHTS (weights.pt beside this
file), MODEL_NAME (tiny-lm), TORCH_THREADS (1).

The weights are not downloaded: `python3 worker.py --generate PATH` writes
them from a fixed seed (the same bytes every time); a worker that finds no
weights file generates it first. They are mapped from the file, not copied
(see mapped_state), so a snapshot of the worker does not hold them.
"""

import codecs
import ctypes
import gc
import io
import json
import mmap
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
import warnings
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

T0 = time.monotonic()
try:
    import numpy as np  # noqa: E402
    import torch  # noqa: E402  (the import is most of a fresh start)
    from torch import nn  # noqa: E402
except ImportError as e:
    # Said in the words of the fix: the output's last line reaches the caller (503 worker_failed).
    sys.exit(
        f"PyTorch is not installed for {sys.executable} ({e}): "
        "on Debian, apt-get install python3-torch"
    )

VOCAB = 256  # bytes
CONTEXT = 256
MAX_TOKENS = 256
MAX_CHOICES = 16
MAX_ALL_CHOICES = 64  # prompts times n


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
    """Writes the model's weights from a fixed seed, unless a file is there already.

    Written to a temporary file and linked into place, never replacing one: workers map the
    file, and one replaced under them would map a deleted file, which CRIU cannot dump (it
    would have to copy the whole file into the image). Two workers generating at once link
    one file; the other's copy goes.
    """
    torch.manual_seed(0)
    model = TinyLM()
    buf = io.BytesIO()  # saved to memory: the archive then names no file, same bytes every time
    torch.save(model.state_dict(), buf)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    try:
        os.link(tmp, path)
    except FileExistsError:
        print(f"weights already at {path}: kept", flush=True)
    finally:
        os.unlink(tmp)


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
    place_weights(model, mapped_state(path))
    model.eval()
    # The weights the model was built with are garbage now: hand their memory back to the
    # system, so a snapshot of this process does not carry it.
    gc.collect()
    trim_heap()
    return model


def mapped_state(path):
    """The state dict saved in `path` (torch.save's zip), each tensor on the file's own pages.

    torch.save stores every tensor's bytes uncompressed and aligned in the zip, so they can be
    mapped read-only where they lie (as torch.load(mmap=True) does from torch 2.1; Debian's is
    1.13). The weights then live in the page cache, shared by every worker of the node that maps
    the file, and a snapshot of this process holds none of them: CRIU records the mapping by the
    file's path, checks the file's size at a restore and maps it again. No descriptor of the file
    stays open (np.memmap would keep one): CRIU would hand such a descriptor to the restored
    worker as it was and map through it, size unchecked.
    """
    storages = {}
    with open(path, "rb") as raw, zipfile.ZipFile(raw) as zf:
        whole = map_whole(raw)
        pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        prefix = pkl[: -len("data.pkl")]

        def storage(key, dtype, numel):
            info = zf.getinfo(f"{prefix}data/{key}")
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: tensor {key} is compressed, cannot be mapped")
            if dtype not in NUMPY_TYPES:
                raise ValueError(f"{path}: tensor {key} is {dtype}, which cannot be mapped")
            kind = np.dtype(NUMPY_TYPES[dtype])
            if numel * kind.itemsize > info.file_size:
                raise ValueError(f"{path}: tensor {key} says {numel} elements, its member holds "
                                 f"{info.file_size} bytes")
            raw.seek(info.header_offset)
            head = raw.read(30)  # the member's local header: its name and extra field follow
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            offset = info.header_offset + 30 + name_len + extra_len
            if offset % kind.itemsize:
                raise ValueError(f"{path}: tensor {key} is not aligned, cannot be mapped")
            array = whole[offset:offset + numel * kind.itemsize].view(kind)
            with warnings.catch_warnings():  # read-only on purpose: nothing writes the weights
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(array).storage()

        class Unpickler(pickle.Unpickler):
            def persistent_load(self, pid):
                _, storage_type, key, _location, numel = pid
                if key not in storages:
                    storages[key] = storage(key, storage_type.dtype, numel)
                return storages[key]

        with zf.open(pkl) as f:
            return Unpickler(f).load()


def map_whole(f):
    """The whole of open file `f` mapped read-only and shared, as a read-only byte array."""
    size = os.fstat(f.fileno()).st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot map {f.name}: {os.strerror(err)}")
    # Never unmapped: the model's weights live in it for as long as the process.
    array = np.frombuffer((ctypes.c_uint8 * size).from_address(addr), dtype=np.uint8)
    array.flags.writeable = False
    return array


NUMPY_TYPES = {
    torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16,
    torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.int8: np.int8,
    torch.uint8: np.uint8, torch.bool: np.bool_,
}


def place_weights(model, state):
    """Makes the tensors of `state` the model's own (no copy), as strictly as load_state_dict."""
    want = set(model.state_dict().keys())
    if set(state.keys()) != want:
        raise ValueError(f"weights do not fit the model: missing {sorted(want - set(state))}, "
                         f"unexpected {sorted(set(state) - want)}")
    for name, tensor in state.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        old = getattr(module, attr)
        if old.shape != tensor.shape or old.dtype != tensor.dtype:
            raise ValueError(f"weights do not fit the model: {name} is {tuple(tensor.shape)} "
                             f"{tensor.dtype}, the model's {tuple(old.shape)} {old.dtype}")
        # The tensors lie on read-only pages: an operation in place on a weight would end
        # the process (SIGSEGV) instead of raising. Inference makes none.
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        else:
            module._buffers[attr] = tensor


def trim_heap():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass  # not glibc


@torch.no_grad()
def generate(model, prompt, max_tokens, temperature=0.0, generator=None):
    """Yields the bytes the model makes after `prompt`, one a step."""
    ids = list(prompt.encode("utf-8"))[-CONTEXT:] or [32]
    for _ in range(max_tokens):
        logits = model(torch.tensor([ids[-CONTEXT:]]))[0, -1]
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=generator))
        else:
            nxt = int(torch.argmax(logits))
        ids.append(nxt)
        yield nxt


def complete(model, prompt, max_tokens):
    """Greedy completion of `prompt`: `max_tokens` bytes, as text."""
    return bytes(generate(model, prompt, max_tokens)).decode("utf-8", errors="replace")


class Choice:
    """One choice as it is made: its text so far, held back while it may be the start of a stop."""

    def __init__(self, tokens, stop):
        self.tokens = tokens
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # made and not yet given out
        self.count = 0
        self.finish = None

    def next_piece(self):
        """The next text to give out ("" when there is none yet), or None when the choice is done."""
        if self.finish is not None:
            return None
        for tok in self.tokens:
            self.count += 1
            self.text += self.decoder.decode(bytes([tok]))
            for s in self.stop:
                at = self.text.find(s)
                if at >= 0:
                    self.finish = "stop"
                    piece, self.text = self.text[:at], ""
                    return piece
            if len(self.text) > self.hold:
                cut = len(self.text) - self.hold
                piece, self.text = self.text[:cut], self.text[cut:]
                return piece
        self.text += self.decoder.decode(b"", final=True)
        self.finish = "length"
        piece, self.text = self.text, ""
        return piece


class BadRequest(ValueError):
    def __init__(self, message, param=None, code=None):
        super().__init__(message)
        self.param = param
        self.code = code


def not_found(method, path):
    """An unknown route's answer, as OpenAI's API words it."""
    return {"error": {"message": f"Invalid URL ({method} {path})", "type": "invalid_request_error",
                      "param": None, "code": None}}


def field(req, name, default):
    """A request field; null is the same as absent, as OpenAI's API takes it."""
    value = req.get(name)
    return default if value is None else value


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# What the model cannot do, refused rather than passed over (a client asking for tool calls or
# JSON would take plain text for an answer): each field, whether a value of it asks for that, and
# why. The other fields of OpenAI's API it does not use (top_p, penalties, user, ...) change
# nothing. As the n-gram sample's server refuses them.
UNSUPPORTED = [
    ("tools", lambda v, chat: isinstance(v, list) and len(v) > 0, "this model calls no tools"),
    ("tool_choice", lambda v, chat: v != "none", "this model calls no tools"),
    ("functions", lambda v, chat: isinstance(v, list) and len(v) > 0, "this model calls no functions"),
    ("function_call", lambda v, chat: v != "none", "this model calls no functions"),
    ("response_format", lambda v, chat: not (isinstance(v, dict) and v.get("type") == "text"),
     "this model answers in text only"),
    # A chat's is whether to give them; a completion's how many alternatives each (0: none, but
    # still the sampled token's).
    ("logprobs", lambda v, chat: not chat or v is not False, "this model gives no log probabilities"),
    ("top_logprobs", lambda v, chat: v != 0, "this model gives no log probabilities"),
    ("echo", lambda v, chat: v is not False, "this model does not echo the prompt"),
    ("suffix", lambda v, chat: v != "", "this model does not insert text"),
    ("best_of", lambda v, chat: v != 1, "this model makes no best_of candidates (n makes choices)"),
    ("logit_bias", lambda v, chat: not (isinstance(v, dict) and not v), "this model takes no token biases"),
]


def parse_request(req, chat):
    """The prompts and sampling of a completion request; BadRequest when they are not valid."""
    if not isinstance(req, dict):
        raise BadRequest("body must be a JSON object")
    for name, asks, why in UNSUPPORTED:
        value = req.get(name)
        if value is not None and asks(value, chat):
            raise BadRequest(f"{name} is not supported: {why}", name)
    if chat:
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty array", "messages")
        lines = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                parts = []
                for part in content:
                    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise BadRequest("a message's content parts must be text parts", "messages")
                    parts.append(part["text"])
                content = "".join(parts)
            elif content is None and isinstance(m, dict):
                content = ""
            if not isinstance(content, str):
                raise BadRequest("every message must be an object whose content is a string, text parts or null", "messages")
            lines.append(content)
        prompts = ["\n".join(lines) + "\n"]
    else:
        prompt = req.get("prompt")
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        else:
            raise BadRequest("prompt must be a string or a non-empty array of strings", "prompt")
    tokens_field = "max_tokens" if req.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = field(req, tokens_field, 16)
    if not is_int(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS:
        raise BadRequest(f"{tokens_field} must be an integer from 1 to {MAX_TOKENS}", tokens_field)
    temperature = field(req, "temperature", 0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise BadRequest("temperature must be a number from 0 to 2", "temperature")
    seed = field(req, "seed", None)
    if seed is not None and (not is_int(seed) or not -SEED_RANGE <= seed < SEED_RANGE):
        raise BadRequest(f"seed must be an integer from {-SEED_RANGE} to {SEED_RANGE - 1}", "seed")
    n = field(req, "n", 1)
    if not is_int(n) or not 1 <= n <= MAX_CHOICES:
        raise BadRequest(f"n must be an integer from 1 to {MAX_CHOICES}", "n")
    if len(prompts) * n > MAX_ALL_CHOICES:
        raise BadRequest(f"{len(prompts)} prompts with n {n} make more than {MAX_ALL_CHOICES} choices", "n")
    stop = field(req, "stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise BadRequest("stop must be a string or up to 4 non-empty strings", "stop")
    options = field(req, "stream_options", {})
    if not isinstance(options, dict):
        raise BadRequest("stream_options must be an object", "stream_options")
    if req.get("stream_options") is not None and field(req, "stream", False) is not True:
        raise BadRequest("stream_options is only allowed when stream is true", "stream_options")
    return {
        "prompts": prompts,
        "max_tokens": max_tokens,
        "temperature": float(temperature),
        "seed": seed,
        "n": n,
        "stop": stop,
        "stream": field(req, "stream", False) is True,
        "include_usage": options.get("include_usage") is True,
    }


class FairLock:
    """A lock taken in the order it was asked for: requests share the model a token at a time,
    in turn (threading.Lock lets the thread that let go take it again at once, so one long
    request held every other one up to its end)."""

    def __init__(self):
        self._cv = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self):
        with self._cv:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._cv.wait()

    def __exit__(self, *_):
        with self._cv:
            self._serving += 1
            self._cv.notify_all()


SEED_RANGE = 2**63  # torch takes a 64-bit seed


class Server:
    def __init__(self, model, name):
        self.model = model
        self.name = name
        self.served = 0
        self.lock = FairLock()


def handler_for(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # An answer goes out as two writes (the head, then the body): on a kept-alive
        # connection Nagle's algorithm held the body until the caller acknowledged the head,
        # which it delays 40 ms or more, and every call through the gateway's pool paid that.
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def answer(self, status, body, served=None):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-worker-requests", str(server.served if served is None else served))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.answer(200, {"status": "ok", "model": server.name})
            elif self.path == "/v1/models":
                self.answer(200, {"object": "list", "data": [{"id": server.name, "object": "model",
                                                              "created": 0, "owned_by": "inferx"}]})
            else:
                self.answer(404, not_found("GET", self.path))

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            chat = self.path.split("?")[0] == "/v1/chat/completions"
            if not chat and self.path.split("?")[0] != "/v1/completions":
                self.answer(404, not_found("POST", self.path))
                return
            try:
                try:
                    req = json.loads(raw or b"{}")
                except ValueError:
                    raise BadRequest("body is not valid JSON")
                asked = parse_request(req, chat)
            except BadRequest as err:
                self.answer(400, {"error": {"message": str(err), "type": "invalid_request_error",
                                            "param": err.param, "code": err.code}})
                return
            with server.lock:
                server.served += 1
                served = server.served
            self.complete(asked, chat, served)

        def caller_gone(self):
            """Whether the caller closed its connection (it waits for nothing more: a readable
            socket with nothing to read). A request it sent next is something to read."""
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True

        def complete(self, asked, chat, served):
            model = server.name
            n = asked["n"]
            prompts = asked["prompts"]
            base = asked["seed"] if asked["seed"] is not None else int.from_bytes(os.urandom(4), "little")
            choices = []
            for k in range(len(prompts) * n):
                generator = torch.Generator().manual_seed((base + k) % SEED_RANGE)
                tokens = generate(server.model, prompts[k // n], asked["max_tokens"], asked["temperature"], generator)
                choices.append(Choice(tokens, asked["stop"]))
            prompt_tokens = sum(len(p.encode("utf-8")) for p in prompts)
            ident = f"{'chatcmpl' if chat else 'cmpl'}-{os.urandom(9).hex()}"
            created = int(time.time())

            def usage():
                completion = sum(c.count for c in choices)
                return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                        "total_tokens": prompt_tokens + completion}

            if not asked["stream"]:
                texts = []
                for c in choices:
                    parts = []
                    while True:
                        if self.caller_gone():
                            self.close_connection = True  # the rest is made for no one
                            return
                        with server.lock:  # one forward pass at a time: the model is not shared safely
                            piece = c.next_piece()
                        if piece is None:
                            break
                        parts.append(piece)
                    texts.append("".join(parts))
                if chat:
                    body_choices = [{"index": i, "message": {"role": "assistant", "content": t},
                                     "finish_reason": c.finish} for i, (t, c) in enumerate(zip(texts, choices))]
                else:
                    body_choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": c.finish}
                                    for i, (t, c) in enumerate(zip(texts, choices))]
                self.answer(200, {"id": ident, "object": "chat.completion" if chat else "text_completion",
                                  "created": created, "model": model, "choices": body_choices,
                                  "usage": usage()}, served)
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.send_header("x-worker-requests", str(served))
            self.end_headers()
            obj = "chat.completion.chunk" if chat else "text_completion"
            extra = {"usage": None} if asked["include_usage"] else {}

            def send(data):
                line = f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
                self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                self.wfile.flush()

            def event(index, piece=None, finish=None, first=False):
                if chat:
                    delta = {"role": "assistant", "content": ""} if first else ({} if piece is None else {"content": piece})
                    choice = {"index": index, "delta": delta, "finish_reason": finish}
                else:
                    choice = {"index": index, "text": piece or "", "logprobs": None, "finish_reason": finish}
                send({"id": ident, "object": obj, "created": created, "model": model,
                      "choices": [choice], **extra})

            try:
                for i, c in enumerate(choices):
                    if chat:
                        event(i, first=True)
                    while True:
                        with server.lock:
                            piece = c.next_piece()
                        if piece is None:
                            break
                        if piece:
                            event(i, piece)
                    event(i, finish=c.finish)
                if asked["include_usage"]:
                    send({"id": ident, "object": obj, "created": created, "model": model,
                          "choices": [], "usage": usage()})
                send("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the caller left: the rest is not made

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
