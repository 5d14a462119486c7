/**
 * The sample function's model server: loads the n-gram weights at start-up,
 * then serves `/health`, `/v1/models`, `/v1/completions` and
 * `/v1/chat/completions` (both with `stream: true` as server-sent events),
 * and `POST /restored`, its restore hook (`endpoint.restore_hook`): a copy
 * restored from a snapshot draws new seeds from the operating system there,
 * since every copy comes back with its snapshot's generator state (Deno's
 * own, `Math.random` and `crypto`, included).
 *
 * A prompt is at most `MAX_PROMPT_CHARS` characters (400
 * `context_length_exceeded`), a body at most `MAX_BODY_BYTES` (413).
 *
 * Env: `PORT` (default 8000), `NGRAM_WEIGHTS` (default the shipped weights),
 * `MODEL_NAME` (default `ngram`), `HOST` (default 127.0.0.1). A `--weights`
 * flag overrides `NGRAM_WEIGHTS`.
 *
 * @module
 */
import { NgramModel } from "./model.ts";
import { readUpTo } from "../../common/bytes.ts";
import { rng } from "../../common/random.ts";

const MAX_TOKENS_LIMIT = 4096;
/** The most completions one request may ask for (`n`). */
const MAX_CHOICES = 16;

/** A bad request: answered 400 with an OpenAI-style error body naming the field at fault. */
class BadRequest extends Error {
  constructor(message: string, readonly param: string | null = null) {
    super(message);
  }
}

/**
 * What the model cannot do, refused rather than passed over (a client asking for tool calls or
 * JSON would take plain text for an answer): each field's name, whether a value of it asks for
 * that, and what is refused. The other fields a model of OpenAI's API takes and this one does not
 * use (`top_p`, penalties, `user`, ...) change nothing.
 */
const UNSUPPORTED: [string, (v: unknown, chat: boolean) => boolean, string][] = [
  ["tools", (v) => Array.isArray(v) && v.length > 0, "this model calls no tools"],
  ["tool_choice", (v) => v !== "none", "this model calls no tools"],
  ["functions", (v) => Array.isArray(v) && v.length > 0, "this model calls no functions"],
  ["function_call", (v) => v !== "none", "this model calls no functions"],
  [
    "response_format",
    (v) => (v as { type?: unknown })?.type !== "text",
    "this model answers in text only",
  ],
  // A chat's is whether to give them; a completion's how many alternatives each (0: none, but
  // still the sampled token's).
  ["logprobs", (v, chat) => !chat || v !== false, "this model gives no log probabilities"],
  ["top_logprobs", (v) => v !== 0, "this model gives no log probabilities"],
  ["echo", (v) => v !== false, "this model does not echo the prompt"],
  ["suffix", (v) => v !== "", "this model does not insert text"],
  ["best_of", (v) => v !== 1, "this model makes no best_of candidates (n makes choices)"],
  [
    "logit_bias",
    (v) => !(v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length === 0),
    "this model takes no token biases",
  ],
];

/** Throws for the first field of `body` that asks for what the model cannot do (null: absent). */
function checkSupported(body: Record<string, unknown>, chat: boolean): void {
  for (const [field, asks, why] of UNSUPPORTED) {
    const v = body[field];
    if (v !== undefined && v !== null && asks(v, chat)) {
      throw new BadRequest(`${field} is not supported: ${why}`, field);
    }
  }
}

interface Sampling {
  maxTokens: number;
  temperature: number;
  seed?: number;
  stop?: string[];
  stream: boolean;
  /** Completions to make (`n`). */
  n: number;
  /** `stream_options.include_usage`: a last event with the usage, before `[DONE]`. */
  includeUsage: boolean;
}

function parseSampling(body: Record<string, unknown>, chat: boolean): Sampling {
  checkSupported(body, chat);
  const tokensField = body.max_tokens != null ? "max_tokens" : "max_completion_tokens";
  const maxTokens = body[tokensField] ?? 16;
  if (
    !Number.isInteger(maxTokens) || (maxTokens as number) < 1 ||
    (maxTokens as number) > MAX_TOKENS_LIMIT
  ) {
    throw new BadRequest(
      `${tokensField} must be an integer from 1 to ${MAX_TOKENS_LIMIT}`,
      tokensField,
    );
  }
  const temperature = body.temperature ?? 1;
  if (typeof temperature !== "number" || temperature < 0 || temperature > 2) {
    throw new BadRequest("temperature must be a number from 0 to 2", "temperature");
  }
  const seed = body.seed ?? undefined; // null: none, as OpenAI's API takes it
  if (seed !== undefined && !Number.isInteger(seed)) {
    throw new BadRequest("seed must be an integer", "seed");
  }
  let stop = body.stop ?? [];
  if (typeof stop === "string") stop = [stop];
  if (
    !Array.isArray(stop) || stop.length > 4 || stop.some((s) => typeof s !== "string" || !s)
  ) {
    throw new BadRequest("stop must be a string or up to 4 non-empty strings", "stop");
  }
  const n = body.n ?? 1;
  if (!Number.isInteger(n) || (n as number) < 1 || (n as number) > MAX_CHOICES) {
    throw new BadRequest(`n must be an integer from 1 to ${MAX_CHOICES}`, "n");
  }
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== "boolean") {
    throw new BadRequest("stream must be a boolean", "stream");
  }
  const options = body.stream_options;
  if (options !== undefined && options !== null) {
    if (typeof options !== "object") {
      throw new BadRequest("stream_options must be an object", "stream_options");
    }
    if (body.stream !== true) {
      throw new BadRequest("stream_options is only allowed when stream is true", "stream_options");
    }
  }
  return {
    maxTokens: maxTokens as number,
    temperature,
    seed: seed as number | undefined,
    stop: stop.length ? stop as string[] : undefined,
    stream: body.stream === true,
    n: n as number,
    includeUsage: (options as { include_usage?: unknown } | null)?.include_usage === true,
  };
}

function json(status: number, body: unknown, extra: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...extra },
  });
}

function error(
  status: number,
  message: string,
  options: { param?: string | null; code?: string | null } = {},
): Response {
  const { param = null, code = null } = options;
  return json(status, { error: { message, type: "invalid_request_error", param, code } });
}

/**
 * The longest prompt the model takes, in characters (its "context length"):
 * it reads only the last few, but a prompt is held whole while it is read,
 * and one of many megabytes would take the worker past its memory limit.
 */
export const MAX_PROMPT_CHARS = 262_144;

/**
 * The largest request body read (bytes): a prompt of `MAX_PROMPT_CHARS`
 * characters, every one escaped in JSON, with room to spare. A body is
 * refused before it is parsed, so that a many-megabyte one (the gateway lets
 * 16 MiB through) never takes the worker past its memory limit.
 */
export const MAX_BODY_BYTES = 4 * 1024 * 1024;

/**
 * `req`'s body as text, or undefined past `max` bytes (by its length, or
 * once that many came, whatever it said).
 */
async function boundedText(req: Request, max: number): Promise<string | undefined> {
  if (Number(req.headers.get("content-length") ?? 0) > max) return undefined;
  const bytes = await readUpTo(req.body, max);
  return bytes && new TextDecoder().decode(bytes);
}

/** Characters (code points) of `s`, counted without an array of them. */
function charCount(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

/** Options for {@linkcode createModelHandler}. */
export interface ModelHandlerOptions {
  /** Model name in answers. @default "ngram" */
  modelName?: string;
}

/** The server's request handler over a loaded model; exported for tests. */
export function createModelHandler(
  model: NgramModel,
  options: ModelHandlerOptions = {},
): (req: Request) => Promise<Response> {
  const name = options.modelName ?? "ngram";
  let seq = 0;
  // Seeds of unseeded requests, and a tag in answer ids: made anew by each restored copy.
  let seeds = rng(osRandom());
  let tag = osRandom().toString(36);

  return async (req: Request): Promise<Response> => {
    const { pathname } = new URL(req.url);
    if (pathname === "/health") return json(200, { status: "ok", model: name });
    if (pathname === "/restored" && req.method === "POST") {
      seeds = rng(osRandom());
      tag = osRandom().toString(36);
      return new Response(null, { status: 204 });
    }
    if (pathname === "/v1/models" && req.method === "GET") {
      return json(200, {
        object: "list",
        data: [{ id: name, object: "model", created: 0, owned_by: "inferx" }],
      });
    }
    const chat = pathname === "/v1/chat/completions";
    if (!chat && pathname !== "/v1/completions") {
      return error(404, `Invalid URL (${req.method} ${pathname})`);
    }
    if (req.method !== "POST") return error(405, `${pathname} takes POST`);
    let body: Record<string, unknown>;
    const text = await boundedText(req, MAX_BODY_BYTES);
    if (text === undefined) {
      return error(
        413,
        `The request body is larger than ${MAX_BODY_BYTES} bytes, more than a prompt of ${MAX_PROMPT_CHARS} characters takes`,
        { code: "request_too_large" },
      );
    }
    try {
      const parsed = JSON.parse(text);
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new BadRequest("body must be a JSON object");
      }
      body = parsed;
    } catch (err) {
      return error(400, err instanceof BadRequest ? err.message : "body is not valid JSON");
    }
    let prompts: string[];
    let sampling: Sampling;
    try {
      prompts = chat ? [chatPrompt(body.messages)] : completionPrompts(body.prompt);
      sampling = parseSampling(body, chat);
      if (prompts.length * sampling.n > MAX_ALL_CHOICES) {
        throw new BadRequest(
          `${prompts.length} prompts with n ${sampling.n} make more than ${MAX_ALL_CHOICES} choices`,
          "n",
        );
      }
    } catch (err) {
      if (err instanceof BadRequest) return error(400, err.message, { param: err.param });
      throw err;
    }
    const id = `${chat ? "chatcmpl" : "cmpl"}-${tag}${Date.now().toString(36)}${
      (++seq).toString(36)
    }`;
    const created = Math.floor(Date.now() / 1000);
    let promptTokens = 0;
    for (const prompt of prompts) {
      const chars = charCount(prompt);
      if (chars > MAX_PROMPT_CHARS) {
        return error(
          400,
          `This model's maximum context length is ${MAX_PROMPT_CHARS} characters; the prompt has ${chars}`,
          { param: chat ? "messages" : "prompt", code: "context_length_exceeded" },
        );
      }
      promptTokens += chars;
    }
    // One generator a choice, `n` for each prompt in turn (choice i*n+j: prompt i's j-th, as
    // OpenAI's API numbers them); with a seed, choice k samples with seed + k (so they differ).
    const gens = Array.from(
      { length: prompts.length * sampling.n },
      (_, k) =>
        model.generate(prompts[Math.floor(k / sampling.n)], {
          ...sampling,
          seed: sampling.seed === undefined ? (seeds() * 2 ** 32) >>> 0 : sampling.seed + k,
        }),
    );
    const finishOf = (n: number) => n < sampling.maxTokens ? "stop" : "length";
    const usageOf = (completion: number) => ({
      prompt_tokens: promptTokens,
      completion_tokens: completion,
      total_tokens: promptTokens + completion,
    });
    if (!sampling.stream) {
      const texts = gens.map((gen) => [...gen].join(""));
      const lengths = texts.map((t) => [...t].length);
      const usage = usageOf(lengths.reduce((a, b) => a + b, 0));
      return json(
        200,
        chat
          ? {
            id,
            object: "chat.completion",
            created,
            model: name,
            choices: texts.map((text, index) => ({
              index,
              message: { role: "assistant", content: text },
              finish_reason: finishOf(lengths[index]),
            })),
            usage,
          }
          : {
            id,
            object: "text_completion",
            created,
            model: name,
            choices: texts.map((text, index) => ({
              index,
              text,
              logprobs: null,
              finish_reason: finishOf(lengths[index]),
            })),
            usage,
          },
        // Completions this process has served: shows a resumed worker kept its state.
        { "x-worker-requests": String(seq) },
      );
    }
    const enc = new TextEncoder();
    const event = (data: unknown) => enc.encode(`data: ${JSON.stringify(data)}\n\n`);
    const object = chat ? "chat.completion.chunk" : "text_completion";
    const chunk = (index: number, piece: string | null, finish: string | null, first = false) =>
      event({
        id,
        object,
        created,
        model: name,
        choices: [
          chat
            ? {
              index,
              delta: first
                ? { role: "assistant", content: "" }
                : piece === null
                ? {}
                : { content: piece },
              finish_reason: finish,
            }
            : { index, text: piece ?? "", logprobs: null, finish_reason: finish },
        ],
        // With include_usage every event carries `usage: null`, the last one the figures.
        ...(sampling.includeUsage ? { usage: null } : {}),
      });
    // Choices one after the other, each event naming its choice's index.
    let choice = 0;
    let n = 0;
    let total = 0;
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        if (chat) controller.enqueue(chunk(0, null, null, true));
      },
      pull(controller) {
        const r = gens[choice].next();
        if (!r.done) {
          n++;
          controller.enqueue(chunk(choice, r.value, null));
          return;
        }
        controller.enqueue(chunk(choice, null, finishOf(n)));
        total += n;
        n = 0;
        if (++choice < gens.length) {
          if (chat) controller.enqueue(chunk(choice, null, null, true));
          return;
        }
        if (sampling.includeUsage) {
          controller.enqueue(
            event({ id, object, created, model: name, choices: [], usage: usageOf(total) }),
          );
        }
        controller.enqueue(enc.encode("data: [DONE]\n\n"));
        controller.close();
      },
    });
    return new Response(stream, {
      headers: {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-worker-requests": String(seq),
      },
    });
  };
}

/** The most choices one request makes: its prompts times `n`. */
export const MAX_ALL_CHOICES = 64;

/** A completion's prompts: one string, or several (each answered by its own `n` choices). */
function completionPrompts(p: unknown): string[] {
  if (typeof p === "string") return [p];
  if (Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === "string")) {
    if (p.length > MAX_ALL_CHOICES) {
      throw new BadRequest(`prompt takes at most ${MAX_ALL_CHOICES} strings`, "prompt");
    }
    return p;
  }
  throw new BadRequest("prompt must be a string or a non-empty array of strings", "prompt");
}

function chatPrompt(messages: unknown): string {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new BadRequest("messages must be a non-empty array", "messages");
  }
  return messages.map((m) => messageText(m)).join("\n") + "\n";
}

/**
 * A chat message's text: its `content` as a string, as text parts
 * (`[{type: "text", text}]`, as current clients send), or none (`null`: an
 * assistant message that only called tools).
 */
function messageText(m: unknown): string {
  if (!m || typeof m !== "object") {
    throw new BadRequest("every message must be an object", "messages");
  }
  const content = (m as { content?: unknown }).content;
  if (typeof content === "string") return content;
  if (content === null) return "";
  if (Array.isArray(content)) {
    return content.map((part) => {
      const p = part as { type?: unknown; text?: unknown } | null;
      if (p?.type === "text" && typeof p.text === "string") return p.text;
      throw new BadRequest(
        `a content part of type ${JSON.stringify(p?.type)} is not supported: only text parts`,
        "messages",
      );
    }).join("");
  }
  throw new BadRequest("a message's content must be a string, text parts or null", "messages");
}

if (import.meta.main) {
  const flag = Deno.args.indexOf("--weights");
  const weights = flag >= 0
    ? Deno.args[flag + 1]
    : Deno.env.get("NGRAM_WEIGHTS") ?? new URL("./weights.bin", import.meta.url).pathname;
  const model = await NgramModel.load(weights);
  const port = Number(Deno.env.get("PORT") ?? 8000);
  const hostname = Deno.env.get("HOST") ?? "127.0.0.1";
  const handler = createModelHandler(model, { modelName: Deno.env.get("MODEL_NAME") ?? "ngram" });
  const server = Deno.serve({
    port,
    hostname,
    onListen: () => {
      console.log(
        `ngram model (order ${model.order}, ${model.contexts} contexts) on ${hostname}:${port}`,
      );
    },
  }, handler);
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(sig, () => server.shutdown().then(() => Deno.exit(0)));
  }
}

/**
 * 32 bits from the operating system (`/dev/urandom`), not from a generator in
 * this process's memory, which a restored copy shares with its snapshot.
 */
function osRandom(): number {
  const b = new Uint8Array(4);
  try {
    using f = Deno.openSync("/dev/urandom");
    f.readSync(b);
  } catch {
    crypto.getRandomValues(b); // no such device: the best there is
  }
  return new DataView(b.buffer).getUint32(0);
}
