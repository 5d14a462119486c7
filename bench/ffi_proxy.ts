/**
 * The floor beneath `raw_proxy.ts`, for `bench/socket_floor.ts`: the same
 * proxy (Content-Length framing only, one upstream connection per client
 * connection, no checks) on the C library's sockets through FFI instead of
 * the runtime's: nonblocking sockets in an epoll set of its own, each ready
 * socket read and its message written on in one synchronous pass, no promise
 * per read or write. A wait that finds nothing ready blocks on a runtime
 * thread (a nonblocking FFI call). It shows what leaving `Deno.listen` and
 * `Deno.connect` could save at most. Not for use anywhere else: it trusts
 * both peers completely, IPv4 and x86-64 Linux only.
 *
 * Run (as a child of bench/socket_floor.ts): `deno run -A bench/ffi_proxy.ts PORT HOST:PORT`.
 *
 * @module
 */
const [port, upstream] = [Number(Deno.args[0]), Deno.args[1]];
const colon = upstream.lastIndexOf(":");
const upHost = upstream.slice(0, colon).split(".").map(Number);
const upPort = Number(upstream.slice(colon + 1));

const c = Deno.dlopen("libc.so.6", {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  recv: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  epoll_block: {
    name: "epoll_wait",
    parameters: ["i32", "buffer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  __errno_location: { parameters: [], result: "pointer" },
}).symbols;
const errno = new Deno.UnsafePointerView(c.__errno_location()!);
const EAGAIN = 11;

const NONBLOCK = 0o4000 | 0o2000000; // SOCK_NONBLOCK | SOCK_CLOEXEC
const EPOLLIN = 0x1, EPOLLRDHUP = 0x2000, EPOLLET = 0x80000000;
const ONE = new Uint8Array(new Int32Array([1]).buffer);

function sockaddr(ip: number[], p: number): Uint8Array {
  const b = new Uint8Array(16);
  new DataView(b.buffer).setUint16(0, 2, true); // AF_INET
  new DataView(b.buffer).setUint16(2, p, false);
  b.set(ip, 4);
  return b;
}

const lfd = c.socket(2, 1 | NONBLOCK, 0);
c.setsockopt(lfd, 1, 2, ONE, 4); // SO_REUSEADDR
if (c.bind(lfd, sockaddr([127, 0, 0, 1], port), 16) < 0) throw new Error(`cannot bind ${port}`);
c.listen(lfd, 1024);
const ep = c.epoll_create1(0o2000000);
const ev = new Uint8Array(12); // struct epoll_event, packed on x86-64
function watch(fd: number, events: number): void {
  new DataView(ev.buffer).setUint32(0, events >>> 0, true);
  new DataView(ev.buffer).setUint32(4, fd, true);
  c.epoll_ctl(ep, 1, fd, ev); // EPOLL_CTL_ADD
}
watch(lfd, EPOLLIN);

/** One side of a proxied pair: what it has read so far, and the other side. */
interface Side {
  fd: number;
  buf: Uint8Array;
  n: number;
  peer: Side;
}
const sides: (Side | undefined)[] = [];
const dec = new TextDecoder();

/** The length of the whole message at the front of `b[0, n)`, or -1 while incomplete. */
function messageEnd(b: Uint8Array, n: number): number {
  for (let i = 3; i < n; i++) {
    if (b[i] === 10 && b[i - 1] === 13 && b[i - 2] === 10 && b[i - 3] === 13) {
      const m = /content-length:\s*(\d+)/i.exec(dec.decode(b.subarray(0, i + 1)));
      const total = i + 1 + (m ? Number(m[1]) : 0);
      return n >= total ? total : -1;
    }
  }
  return -1;
}

function closePair(a: Side): void {
  for (const s of [a, a.peer]) {
    if (sides[s.fd] !== s) continue;
    sides[s.fd] = undefined;
    c.close(s.fd);
  }
}

/** Reads until the socket has nothing more (edge-triggered), passing each whole message on. */
function readable(a: Side): void {
  while (true) {
    const r = c.recv(a.fd, a.buf.subarray(a.n), a.buf.length - a.n, 0);
    if (r <= 0) {
      if (r < 0 && errno.getInt32(0) === EAGAIN) return; // all read: wait for the next edge
      return closePair(a);
    }
    a.n += r;
    const end = messageEnd(a.buf, a.n);
    if (end < 0) continue;
    // Loopback with small messages: the whole message goes in one send, or the pair is dropped.
    if (c.send(a.peer.fd, a.buf, end, 0x4000) !== end) return closePair(a);
    a.buf.copyWithin(0, end, a.n);
    a.n -= end;
  }
}

function accept(): void {
  while (true) {
    const cfd = c.accept4(lfd, null, null, NONBLOCK);
    if (cfd < 0) return;
    const ufd = c.socket(2, 1 | NONBLOCK, 0);
    c.setsockopt(cfd, 6, 1, ONE, 4); // TCP_NODELAY
    c.setsockopt(ufd, 6, 1, ONE, 4);
    c.connect(ufd, sockaddr(upHost, upPort), 16); // in progress; the client's request comes after
    const client: Side = { fd: cfd, buf: new Uint8Array(65536), n: 0, peer: undefined! };
    const up: Side = { fd: ufd, buf: new Uint8Array(65536), n: 0, peer: client };
    client.peer = up;
    sides[cfd] = client;
    sides[ufd] = up;
    watch(cfd, EPOLLIN | EPOLLRDHUP | EPOLLET);
    watch(ufd, EPOLLIN | EPOLLRDHUP | EPOLLET);
  }
}

const MAX = 256;
const events = new Uint8Array(12 * MAX);
const view = new DataView(events.buffer);
while (true) {
  let n = c.epoll_wait(ep, events, MAX, 0);
  if (n === 0) n = await c.epoll_block(ep, events, MAX, -1);
  for (let i = 0; i < n; i++) {
    const fd = view.getUint32(i * 12 + 4, true);
    if (fd === lfd) accept();
    else {
      const s = sides[fd];
      if (s) readable(s);
    }
  }
}
