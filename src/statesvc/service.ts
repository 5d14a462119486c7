/**
 * The state service: the only writer of the metadata store. It validates
 * every object at the edge (zod schemas), admits it (its tenant and namespace
 * exist, a linked policy exists, nothing still depends on what is deleted),
 * gives a function a new version when an update changes what defines its
 * workers (not for its policy, metadata or status), writes nothing for an
 * update equal to the stored object, answers dry runs without writing, and
 * exposes the store's revisioned reads and watches. Implements
 * {@linkcode MetaClient} in-process.
 *
 * @module
 */
import {
  AlreadyExistsError,
  ConflictError,
  InferxError,
  invalidInput,
  NotFoundError,
  ValidationError,
} from "../common/errors.ts";
import { NODE_NAME_RE, NODE_NAME_RULE, NodeInfoSchema, PodInfoSchema } from "../model/cluster.ts";
import { ApiKeyRecordSchema } from "../model/apikey.ts";
import { SnapshotInfoSchema, snapshotName } from "../model/snapshot.ts";
import {
  admitCallBody,
  admitCallRecord,
  admitCallSecret,
  callBodyRef,
  resultBodyCall,
} from "../model/call.ts";
import {
  isUserType,
  objectKey,
  type ObjectType,
  parseKey,
  SYSTEM,
  typePrefix,
} from "../model/keys.ts";
import { jsonEqual } from "../common/json.ts";
import { KeyedLock } from "../common/keyed_lock.ts";
import {
  decodeStoredUserObject,
  decodeUserObject,
  DEFAULT_OBJECT_QUOTA,
  DEFAULT_POLICY,
  encodeUserObject,
  type FuncPolicy,
  type FunctionSpec,
  functionSpecToJson,
  listPastBound,
  MAX_USER_OBJECT,
  metadataWriteChecks,
  sameWorker,
  storedCreatedAt,
  tenantQuota,
  type UserObject,
  userObjectToJson,
  writeChecks,
} from "../model/schemas.ts";
import { type FunctionObject, nextVersions, rolloutVersions } from "../model/versions.ts";
import type { MetaStore } from "../store/types.ts";
import { logger } from "../common/log.ts";
import type {
  MetaClient,
  MetaRecord,
  MetaWatchOptions,
  ObjectInput,
  ObjectRef,
  WriteOptions,
  WriteResult,
} from "../rpc/types.ts";

const log = logger("statesvc");

/** The version string the service reports. */
export const SERVICE_VERSION = "inferx-deno/0.1.0";

const refText = (r: ObjectRef) => `${r.type} ${r.tenant}/${r.namespace}/${r.name}`;

/** Where the ids of the sample objects created once are kept (outside the registry). */
const SAMPLES_KEY = "/inferx/samples-created";

const utf8 = new TextEncoder();

/** In-process state service over a {@linkcode MetaStore}. */
export class StateService implements MetaClient {
  #store: MetaStore;
  /**
   * A write whose admission reads other objects (a parent that must exist,
   * dependents that must not, a quota) runs alone among those of its tenant:
   * otherwise two could each pass their checks on what the other had not
   * yet written (a function created into a namespace being deleted, three
   * functions under a quota of one).
   */
  #admission = new KeyedLock();

  constructor(store: MetaStore) {
    this.#store = store;
  }

  version(): Promise<string> {
    return Promise.resolve(SERVICE_VERSION);
  }

  /**
   * The sample objects created once already (`type/tenant/namespace/name`),
   * and the revision of that record (absent: none created yet).
   */
  async samplesCreated(): Promise<{ ids: string[]; revision?: number }> {
    const kv = await this.#store.get(SAMPLES_KEY);
    return kv ? { ids: JSON.parse(kv.value), revision: kv.revision } : { ids: [] };
  }

  /** Records `ids` as the samples created once (compare-and-swap on `revision`). */
  async recordSamples(ids: string[], revision?: number): Promise<void> {
    const value = JSON.stringify([...new Set(ids)].sort());
    if (revision === undefined) await this.#store.create(SAMPLES_KEY, value);
    else await this.#store.update(SAMPLES_KEY, value, revision);
  }

  async get(ref: ObjectRef): Promise<MetaRecord | undefined> {
    const kv = await this.#store.get(objectKey(ref.type, ref.tenant, ref.namespace, ref.name));
    return kv && { ...ref, revision: kv.revision, value: kv.value };
  }

  async list(
    type: ObjectType,
    tenant?: string,
    namespace?: string,
  ): Promise<{ items: MetaRecord[]; revision: number }> {
    // Empty is none, as over gRPC (whose strings cannot be absent).
    tenant ||= undefined;
    namespace ||= undefined;
    // Each names one level of the key: "a/b" would list by a prefix of another tenant's keys.
    for (const [k, v] of [["tenant", tenant], ["namespace", namespace]] as const) {
      if (v?.includes("/")) {
        throw new ValidationError(`Invalid list: ${k} "${v}" is no name`, k);
      }
    }
    if (namespace !== undefined && tenant === undefined) {
      throw new ValidationError("Invalid list: a namespace needs its tenant", "namespace");
    }
    const { items, revision } = await this.#store.list(typePrefix(type, tenant, namespace));
    return {
      revision,
      items: items.flatMap((kv) => {
        const ref = parseKey(kv.key);
        return ref ? [{ ...ref, revision: kv.revision, value: kv.value }] : [];
      }),
    };
  }

  create(input: ObjectInput, options: WriteOptions = {}): Promise<WriteResult> {
    if (input.type === "call" || input.type === "callbody") {
      // Stored beside each other (a tenant's calls' writes share the store's syncs), but not
      // beside the deletion of their namespace or tenant, which deletes the calls there: one
      // stored after it looked would outlive them, for a namesake made later to read (and run).
      return this.#admission.runShared(input.tenant, async () => {
        await this.#mustExist("namespace", input.tenant, SYSTEM, input.namespace);
        // A call whose body is stored apart comes after its body, a write of its own: a
        // namespace deleted between the two (and made again) took the body with it.
        const apart = (input.object as { bodyBytes?: unknown } | undefined)?.bodyBytes;
        if (input.type === "call" && typeof apart === "number" && apart > 0) {
          const body = callBodyRef(input, "request");
          if (
            !await this.#store.get(objectKey(body.type, body.tenant, body.namespace, body.name))
          ) {
            throw new NotFoundError(
              `Cannot admit object: call ${input.tenant}/${input.namespace}/${input.name}'s ` +
                `request body is not stored (its namespace was deleted meanwhile?)`,
            );
          }
        }
        // A call's answer is stored for a call that is there: one whose namespace was deleted
        // (and made again) under it, taking the call, would leave the answer for good.
        const call = input.type === "callbody" ? resultBodyCall(input.name) : undefined;
        if (call !== undefined) {
          if (!await this.#store.get(objectKey("call", input.tenant, input.namespace, call))) {
            throw new NotFoundError(
              `Cannot admit object: call ${input.tenant}/${input.namespace}/${call} is not ` +
                `stored (its namespace was deleted meanwhile?)`,
            );
          }
        }
        return await this.#create(input, options);
      });
    }
    return this.#serialized(input, () => this.#create(input, options));
  }

  update(input: ObjectInput, options: WriteOptions = {}): Promise<WriteResult> {
    const bad = revisionError(input.revision);
    if (bad) return Promise.reject(bad);
    return this.#serialized(input, () => this.#update(input, options));
  }

  delete(ref: ObjectRef, revision?: number): Promise<number> {
    const bad = revisionError(revision);
    if (bad) return Promise.reject(bad);
    return this.#serialized(ref, () => this.#delete(ref, revision));
  }

  /** Runs `write` alone among the admitted writes of `ref`'s tenant, if its admission reads others. */
  #serialized<T>(ref: ObjectRef & { object?: unknown }, write: () => Promise<T>): Promise<T> {
    let tenant: string | undefined;
    if (ref.type === "tenant" || ref.type === "callsecret") tenant = ref.name;
    else if (isUserType(ref.type)) tenant = ref.tenant;
    else if (ref.type === "apikey") {
      const t = (ref.object as { tenant?: unknown } | undefined)?.tenant;
      if (typeof t === "string") tenant = t;
    }
    return tenant === undefined ? write() : this.#admission.run(tenant, write);
  }

  async #create(input: ObjectInput, options: WriteOptions): Promise<WriteResult> {
    const { value } = await this.#admit(input, undefined);
    const ref = refOf(input);
    const exists = () =>
      new AlreadyExistsError(`Cannot create ${refText(input)}: it already exists`);
    if (options.dryRun) {
      if (await this.get(ref)) throw exists();
      return { ...ref, revision: 0, value, dryRun: true };
    }
    const key = objectKey(input.type, input.tenant, input.namespace, input.name);
    const revision = await this.#store.create(key, value).catch((err) => {
      throw err instanceof AlreadyExistsError ? exists() : err;
    });
    return { ...ref, revision, value };
  }

  async #update(input: ObjectInput, options: WriteOptions): Promise<WriteResult> {
    const ref = refOf(input);
    const current = await this.get(ref);
    if (!current) throw new NotFoundError(`Cannot update ${refText(ref)}: it does not exist`);
    if (input.revision === undefined) {
      throw new ValidationError(
        `Cannot update ${refText(ref)}: revision is required (the revision you read)`,
        "revision",
      );
    }
    if (input.revision !== current.revision) {
      throw new ConflictError(
        `Cannot update ${
          refText(ref)
        }: it changed (revision ${current.revision}, you sent ${input.revision})`,
        { revision: current.revision },
      );
    }
    const { value, unchanged } = await this.#admit(input, current);
    const dry = options.dryRun ? { dryRun: true } : {};
    if (options.dryRun) {
      if (unchanged) return { ...current, unchanged: true, ...dry };
      return { ...ref, revision: current.revision, value, dryRun: true };
    }
    // A funcpolicy's functions are settled under it also when it is written again unchanged:
    // a rebase that failed before (the store away) is made then.
    if (unchanged) {
      if (ref.type === "funcpolicy") await this.#rebaseLinked(ref, current.value);
      return { ...current, unchanged: true };
    }
    const key = objectKey(ref.type, ref.tenant, ref.namespace, ref.name);
    const revision = await this.#store.update(key, value, input.revision);
    if (ref.type === "funcpolicy") await this.#rebaseLinked(ref, value);
    return { ...ref, revision, value };
  }

  /**
   * After a write of funcpolicy `ref` (its stored `value`): the functions
   * linked to it take their versions under it, as a change of an inline
   * policy does. One that no longer splits calls makes the newest version
   * the stable one and lets the older go (a canary ended by the policy is
   * over: set again, it applies to the next version, not to the one before).
   */
  async #rebaseLinked(ref: ObjectRef, value: string): Promise<void> {
    const p = decodeStoredUserObject(value, 0);
    if (p.type !== "funcpolicy") return;
    const { items } = await this.#store.list(typePrefix("function", ref.tenant, ref.namespace));
    for (const kv of items) {
      const f = storedUserObject({ ...parseKey(kv.key)!, revision: kv.revision, value: kv.value });
      if (f?.type !== "function" || f.spec.policy?.kind !== "link") continue;
      if (f.spec.policy.name !== ref.name) continue;
      const next = nextVersions(f, f, p.spec, false);
      if (next.stableVersion === f.stableVersion && !!next.olderVersions === !!f.olderVersions) {
        continue;
      }
      // Under the tenant's admission lock: nothing else of this state service writes the
      // function meanwhile. One that fails (the store away, another replica's write) is
      // logged: the policy is written; the next write of it settles the function.
      await this.#store.update(kv.key, encodeUserObject(next), kv.revision).catch((err) =>
        log.warn("Cannot settle function {name} under funcpolicy {policy}: {error}", {
          name: f.name,
          policy: ref.name,
          error: String(err),
        })
      );
    }
  }

  async #delete(ref: ObjectRef, revision?: number): Promise<number> {
    await this.#checkNoDependents(ref);
    const key = objectKey(ref.type, ref.tenant, ref.namespace, ref.name);
    const gone = (e: unknown) => {
      if (!(e instanceof NotFoundError)) throw e;
    };
    const stale = (now: number) =>
      new ConflictError(
        `Cannot delete ${refText(ref)}: it changed (revision ${now}, you sent ${revision})`,
        { revision: now },
      );
    const notFound = () => new NotFoundError(`Cannot delete ${refText(ref)}: it does not exist`);
    // What hangs off a tenant or a namespace goes before it, so that a crash half way leaves
    // it standing, to be deleted again; never its calls without it, for one made again
    // under the same name to take over (and run). So those two are looked at first; for the
    // others the store's delete checks the same (and a call's body, a MB perhaps, is not read
    // to be deleted).
    if (ref.type === "tenant" || ref.type === "namespace") {
      const current = await this.get(ref);
      if (!current) throw notFound();
      if (revision !== undefined && revision !== current.revision) throw stale(current.revision);
    }
    if (ref.type === "tenant") {
      // Its callback signing secret too: a tenant made again must not sign with the one before's.
      await this.#deleteCalls(ref.name);
      await this.#store.delete(objectKey("callsecret", SYSTEM, SYSTEM, ref.name)).catch(gone);
    } else if (ref.type === "namespace") {
      // Its calls (their functions are gone): one made again must not show their answers.
      await this.#deleteCalls(ref.tenant, ref.name);
    }
    let deleted: number;
    try {
      deleted = await this.#store.delete(key, revision);
    } catch (err) {
      if (err instanceof NotFoundError) throw notFound();
      if (err instanceof ConflictError) throw stale(Number(err.details?.revision));
      throw err;
    }
    if (ref.type === "call") {
      // Its bodies go with it, whoever deletes it (src/model/call.ts).
      for (const part of ["request", "result"] as const) {
        const b = callBodyRef(ref, part);
        await this.#store.delete(objectKey(b.type, b.tenant, b.namespace, b.name)).catch(gone);
      }
    }
    return deleted;
  }

  /**
   * Deletes the asynchronous calls of a tenant or one of its namespaces,
   * with their bodies (tens of thousands, perhaps: the store deletes them in
   * chunks, letting other work go on between).
   */
  async #deleteCalls(tenant: string, namespace?: string): Promise<void> {
    for (const type of ["call", "callbody"] as const) {
      // Their keys alone: read whole, 100 bodies of a MB held the event loop half a second.
      await this.#store.deleteKeys(await this.#store.keys(typePrefix(type, tenant, namespace)));
    }
  }

  watch(type: ObjectType, options: MetaWatchOptions): { cancel(): void } {
    return this.#store.watch(typePrefix(type, options.tenant, options.namespace), {
      afterRevision: options.afterRevision,
      onError: options.onError,
      onEvent(ev) {
        const key = ev.type === "put" ? ev.kv.key : ev.key;
        const ref = parseKey(key);
        if (!ref) return;
        if (ev.type === "put") {
          options.onEvent({
            type: "put",
            record: { ...ref, revision: ev.kv.revision, value: ev.kv.value },
          });
        } else options.onEvent({ type: "delete", ref, revision: ev.revision });
      },
    });
  }

  /**
   * Validates `input` and checks what it refers to; returns the value to
   * store and whether it equals the stored one.
   */
  async #admit(
    input: ObjectInput,
    current: MetaRecord | undefined,
  ): Promise<{ value: string; unchanged: boolean }> {
    if (isUserType(input.type)) return await this.#admitUser(input, current);
    const value = this.#admitCluster(input);
    if (input.type === "apikey") {
      // Under the tenant's admission lock, as its delete's check for keys left: a key must
      // not outlive (and then reach a namesake of) the tenant or namespace it is kept to.
      const k = JSON.parse(value) as { tenant?: string; namespace?: string };
      if (k.namespace !== undefined) {
        await this.#mustExist("namespace", k.tenant!, SYSTEM, k.namespace);
      } else if (k.tenant !== undefined) await this.#mustExist("tenant", SYSTEM, SYSTEM, k.tenant);
      if (!current && k.tenant !== undefined) {
        await this.#checkCount(k.tenant, "max_api_keys", () => this.#keysOf(k.tenant!));
      }
    } else if (input.type === "callsecret") {
      await this.#mustExist("tenant", SYSTEM, SYSTEM, input.name);
    }
    return { value, unchanged: false };
  }

  /**
   * A user object: its parents and linked policy exist; a function keeps its
   * version unless what defines its workers changed (then quotas are checked
   * again), and keeps the status the scheduler wrote unless the writer sends
   * one (users cannot: the gateway drops it).
   */
  async #admitUser(input: ObjectInput, current: MetaRecord | undefined) {
    const prev = current && storedUserObject(current);
    const past = listPastBound(input, prev);
    if (past) throw past;
    const obj = decodeUserObject(input, { writeChecks: false });
    if (obj.type === "namespace") await this.#mustExist("tenant", SYSTEM, SYSTEM, obj.tenant);
    if (obj.type === "function" || obj.type === "funcpolicy") {
      await this.#mustExist("namespace", obj.tenant, SYSTEM, obj.namespace);
    }
    if (!current && (obj.type === "namespace" || obj.type === "funcpolicy")) {
      await this.#checkCount(
        obj.tenant,
        obj.type === "namespace" ? "max_namespaces" : "max_funcpolicies",
        () => this.#store.list(typePrefix(obj.type, obj.tenant)).then((r) => r.items.length),
      );
    }
    // Rules newer than what is stored bind a changed spec only: a status write (the
    // scheduler's) or a rollout of an object stored before them passes.
    const specOf = (o: UserObject) => userObjectToJson(o).object as { spec: unknown };
    if (!prev || !jsonEqual(specOf(prev).spec, specOf(obj).spec)) writeChecks(obj);
    if (!prev || !jsonEqual(prev.metadata, obj.metadata)) metadataWriteChecks(obj);
    let stored: UserObject = obj;
    if (obj.type === "function") {
      if (obj.spec.policy?.kind === "link") {
        await this.#mustExist("funcpolicy", obj.tenant, obj.namespace, obj.spec.policy.name);
      }
      const old = prev?.type === "function" ? prev : undefined;
      const newWorker = !old || !sameWorker(old.spec, obj.spec);
      if (newWorker) await this.#checkQuota(obj.tenant, obj.spec, current === undefined);
      const versioned = await this.#versioned(obj, old, newWorker);
      if (!hasStatus(input.object) && old?.status) versioned.status = old.status;
      stored = versioned;
    }
    if (obj.type === "funcpolicy" && obj.spec.traffic) {
      throw new ValidationError(
        `Invalid funcpolicy ${obj.tenant}/${obj.namespace}/${obj.name}: traffic names versions of one function: set it in that function's inline policy`,
        "traffic",
      );
    }
    // Its creation time is the state service's to keep, whatever the writer sent.
    const createdAt = current ? storedCreatedAt(current.value) : Date.now();
    if (createdAt !== undefined) stored = { ...stored, createdAt };
    const value = encodeUserObject(stored);
    // UTF-8 bytes, what a store takes: up to 3 a character of JSON text.
    const bytes = value.length * 3 <= MAX_USER_OBJECT
      ? value.length
      : utf8.encode(value).byteLength;
    if (bytes > MAX_USER_OBJECT) {
      // Any store would take it here, but etcd refuses requests past 1.5 MiB by default, and
      // that refusal would read as the store being unavailable (503, to retry) — refused here.
      throw new InferxError(
        "too_large",
        `${refText(input)} is ${bytes} bytes stored; the most is ${MAX_USER_OBJECT}`,
        { details: { limit: MAX_USER_OBJECT } },
      );
    }
    const unchanged = prev !== undefined &&
      jsonEqual(JSON.parse(value), JSON.parse(encodeUserObject(prev)));
    return { value, unchanged };
  }

  /** Nodes, pods and API keys: validated, stored as given. */
  #admitCluster(input: ObjectInput): string {
    if (input.type === "node") {
      const r = NodeInfoSchema.safeParse(input.object);
      if (!r.success) throw invalidInput(refText(input), r.error);
      if (!NODE_NAME_RE.test(r.data.name)) {
        throw new ValidationError(`Invalid ${refText(input)}: name: ${NODE_NAME_RULE}`, "name");
      }
      if (r.data.name !== input.name || input.tenant !== SYSTEM || input.namespace !== SYSTEM) {
        // Another record of the same name elsewhere would stand for the node to the scheduler.
        throw new ValidationError(
          `Invalid ${refText(input)}: a node lives at system/system/{its name}`,
          "name",
        );
      }
      return JSON.stringify(r.data);
    }
    if (input.type === "pod") {
      const r = PodInfoSchema.safeParse(input.object);
      if (!r.success) throw invalidInput(refText(input), r.error);
      if (
        r.data.id !== input.name || r.data.tenant !== input.tenant ||
        r.data.namespace !== input.namespace
      ) {
        // Its node agent finds it by what it says: one stored elsewhere could never be deleted.
        throw new ValidationError(
          `Invalid ${refText(input)}: a pod lives at {its tenant}/{its namespace}/{its id}`,
          "id",
        );
      }
      return JSON.stringify(r.data);
    }
    if (input.type === "apikey") {
      const r = ApiKeyRecordSchema.safeParse(input.object);
      if (!r.success) throw invalidInput(refText(input), r.error);
      if (r.data.id !== input.name || input.tenant !== SYSTEM || input.namespace !== SYSTEM) {
        throw new ValidationError(
          `Invalid ${refText(input)}: an API key lives at system/system/{its id}`,
          "id",
        );
      }
      return JSON.stringify(r.data);
    }
    if (input.type === "snapshot") {
      const r = SnapshotInfoSchema.safeParse(input.object);
      if (!r.success) throw invalidInput(refText(input), r.error);
      const want = snapshotName(r.data.func, r.data.funcVersion, r.data.node);
      if (
        input.name !== want || input.tenant !== r.data.tenant ||
        input.namespace !== r.data.namespace
      ) {
        throw new ValidationError(
          `Invalid ${refText(input)}: a snapshot lives at {tenant}/{namespace}/${want}`,
          "name",
        );
      }
      return JSON.stringify(r.data);
    }
    if (input.type === "call") return admitCallRecord(input, input.object);
    if (input.type === "callbody") return admitCallBody(input, input.object);
    if (input.type === "callsecret") {
      if (input.tenant !== SYSTEM || input.namespace !== SYSTEM) {
        throw new ValidationError(
          `Invalid ${refText(input)}: a callback secret lives at system/system/{its tenant}`,
          "tenant",
        );
      }
      return admitCallSecret(input.name, input.object);
    }
    throw new ValidationError(`Invalid object: unknown type "${input.type}"`, "type");
  }

  /**
   * A function write with its versions (src/model/versions.ts): a new version
   * when what defines its workers changed, the older versions its traffic
   * split names kept; or a rollout (promote, roll back), which must carry the
   * current spec unchanged.
   */
  async #versioned(
    obj: FunctionObject,
    prev: FunctionObject | undefined,
    newWorker: boolean,
  ): Promise<FunctionObject> {
    const policy = await this.#policyOf(obj);
    if (!obj.rollout) return nextVersions(prev, obj, policy, newWorker);
    const what = `function ${obj.tenant}/${obj.namespace}/${obj.name}`;
    if (!prev) throw new NotFoundError(`Cannot roll out ${what}: it does not exist`);
    const same = (s: FunctionSpec) => JSON.stringify(functionSpecToJson(s));
    if (same(obj.spec) !== same(prev.spec)) {
      throw new ValidationError(
        `Cannot roll out ${what}: a rollout changes nothing else (send the current spec with it)`,
        "rollout",
      );
    }
    return rolloutVersions(prev, obj.rollout, policy);
  }

  /** The policy a function's spec puts in force (a linked one read from the store). */
  async #policyOf(obj: FunctionObject): Promise<FuncPolicy> {
    const ref = obj.spec.policy;
    if (!ref) return DEFAULT_POLICY;
    if (ref.kind === "inline") return ref.policy;
    const kv = await this.#store.get(objectKey("funcpolicy", obj.tenant, obj.namespace, ref.name));
    const p = kv && decodeStoredUserObject(kv.value, kv.revision);
    return p?.type === "funcpolicy" ? p.spec : DEFAULT_POLICY;
  }

  /** A tenant's `max_functions` (on create) and `max_gpu` (a replica that could never fit). */
  async #checkQuota(tenant: string, spec: FunctionSpec, creating: boolean) {
    const kv = await this.#store.get(objectKey("tenant", SYSTEM, SYSTEM, tenant));
    if (!kv) return;
    const t = decodeStoredUserObject(kv.value, kv.revision);
    const quota = tenantQuota(t.spec as Record<string, unknown>);
    const gpus = spec.resources.GPU.Count;
    if (quota.max_gpu !== undefined && gpus > quota.max_gpu) {
      throw new InferxError(
        "quota_exceeded",
        `Tenant ${tenant} quota max_gpu is ${quota.max_gpu}: one replica of this function needs ${gpus} GPU(s)`,
        { details: { limit: "max_gpu", quota: quota.max_gpu } },
      );
    }
    if (creating && quota.max_functions !== undefined) {
      const { items } = await this.#store.list(typePrefix("function", tenant));
      if (items.length >= quota.max_functions) {
        throw new InferxError(
          "quota_exceeded",
          `Tenant ${tenant} quota max_functions is ${quota.max_functions}: it has ${items.length} function(s)`,
          { details: { limit: "max_functions", quota: quota.max_functions } },
        );
      }
    }
  }

  /**
   * Refuses one more object of a kind `limit` counts when `tenant` has as
   * many as its quota allows (else {@linkcode DEFAULT_OBJECT_QUOTA}).
   */
  async #checkCount(
    tenant: string,
    limit: "max_namespaces" | "max_funcpolicies" | "max_api_keys",
    count: () => Promise<number>,
  ) {
    const kv = await this.#store.get(objectKey("tenant", SYSTEM, SYSTEM, tenant));
    const quota = kv
      ? tenantQuota(decodeStoredUserObject(kv.value, kv.revision).spec as Record<string, unknown>)
      : {};
    const max = quota[limit] ?? DEFAULT_OBJECT_QUOTA;
    const n = await count();
    if (n < max) return;
    const what = {
      max_namespaces: "namespaces",
      max_funcpolicies: "function policies",
      max_api_keys: "API keys",
    }[limit];
    throw new InferxError(
      "quota_exceeded",
      `Tenant ${tenant} quota ${limit} is ${max}: it has ${n} ${what}`,
      { details: { limit, quota: max } },
    );
  }

  async #mustExist(type: ObjectType, tenant: string, namespace: string, name: string) {
    const kv = await this.#store.get(objectKey(type, tenant, namespace, name));
    if (kv) return;
    const where = type === "tenant"
      ? name
      : type === "namespace"
      ? `${tenant}/${name}`
      : `${tenant}/${namespace}/${name}`;
    throw new NotFoundError(`Cannot admit object: ${type} ${where} does not exist`);
  }

  /**
   * API keys restricted to `tenant` (and to `namespace`, when given) that
   * still work: an expired one reaches nothing, a namesake made later
   * included (the gateways delete its record soon after).
   */
  async #keysOf(tenant: string, namespace?: string): Promise<number> {
    const { items } = await this.#store.list(typePrefix("apikey", SYSTEM, SYSTEM));
    const now = Date.now();
    let n = 0;
    for (const kv of items) {
      const k = ApiKeyRecordSchema.safeParse(JSON.parse(kv.value));
      if (!k.success || k.data.tenant !== tenant) continue;
      if (k.data.expiresAt !== undefined && k.data.expiresAt <= now) continue;
      if (namespace === undefined || k.data.namespace === namespace) n++;
    }
    return n;
  }

  async #checkNoDependents(ref: ObjectRef) {
    const blocked = (what: string) => {
      throw new ConflictError(`Cannot delete ${refText(ref)}: ${what}`);
    };
    if (ref.type === "tenant") {
      const { items } = await this.#store.list(typePrefix("namespace", ref.name));
      if (items.length) blocked(`it still has ${items.length} namespace(s)`);
      // Its keys would reach a tenant made again under the same name.
      const keys = await this.#keysOf(ref.name);
      if (keys) blocked(`it still has ${keys} API key(s); revoke them first`);
    } else if (ref.type === "namespace") {
      for (const t of ["function", "funcpolicy"] as const) {
        const { items } = await this.#store.list(typePrefix(t, ref.tenant, ref.name));
        if (items.length) blocked(`it still has ${items.length} ${t} object(s)`);
      }
      const keys = await this.#keysOf(ref.tenant, ref.name);
      if (keys) blocked(`it still has ${keys} API key(s); revoke them first`);
    } else if (ref.type === "funcpolicy") {
      const { items } = await this.#store.list(typePrefix("function", ref.tenant, ref.namespace));
      for (const kv of items) {
        const fn = decodeStoredUserObject(kv.value, kv.revision);
        if (
          fn.type === "function" && fn.spec.policy?.kind === "link" &&
          fn.spec.policy.name === ref.name
        ) {
          blocked(`function ${fn.name} links to it`);
        }
      }
    }
  }
}

/** A stored user object decoded, or undefined when it no longer passes today's schema. */
function storedUserObject(rec: MetaRecord): UserObject | undefined {
  try {
    return decodeStoredUserObject(rec.value, rec.revision);
  } catch {
    return undefined;
  }
}

/** Whether an object as written carries a `status` beside its spec. */
function hasStatus(object: unknown): boolean {
  return !!object && typeof object === "object" && "spec" in object && "status" in object &&
    (object as { status: unknown }).status !== undefined;
}

function refOf(r: ObjectRef): ObjectRef {
  return { type: r.type, tenant: r.tenant, namespace: r.namespace, name: r.name };
}

/** Why a revision sent with a write is none: a whole number from 0 (a negative one read as a conflict). */
function revisionError(revision: number | undefined): ValidationError | undefined {
  if (revision === undefined || (Number.isSafeInteger(revision) && revision >= 0)) return undefined;
  return new ValidationError(`Invalid revision ${revision}: a whole number >= 0`, "revision");
}
