import assert from "node:assert/strict";
import { CONFIG_ENV, dataDirProblem, loadNodeConfig, readConfig, REPO_ROOT } from "./config.ts";

const envOf = (vars: Record<string, string>) => (k: string) => vars[k];

Deno.test("readConfig() gives every setting its default when the environment is empty", () => {
  assert.deepEqual(readConfig(envOf({})), {
    role: "All",
    logLevel: "info",
    dataDir: "./data",
    samplesDir: `${REPO_ROOT}/config/functions`,
    cpuProfile: undefined,
    heapProfile: undefined,
    cluster: {
      bindHost: "127.0.0.1",
      etcdAddrs: undefined,
      statesvcAddr: "127.0.0.1:1237",
      clusterToken: undefined,
      schedulerAddrs: ["127.0.0.1:1238"],
    },
    statesvc: { port: 1237 },
    scheduler: {
      port: 1238,
      httpPort: 1239,
      gatewayTimeoutMs: 10_000,
      nodeTimeoutMs: 10_000,
      reclaimGraceMs: 10_000,
    },
    gateway: {
      port: 4000,
      workers: undefined,
      group: undefined,
      host: "127.0.0.1",
      drainS: 10,
      readAheadMb: 64,
      spillMb: 1024,
      spillDir: "./data/gateway-spill",
      bodyLimit: 16 * 1024 * 1024,
      bodyBufferMb: 256,
      adminApiKey: undefined,
      metricsKey: undefined,
      oidc: undefined,
    },
    node: {
      configPath: `${REPO_ROOT}/config/node.json`,
      configRequired: false,
      mountAllow: [],
      dockerHost: undefined,
      workerUser: undefined,
      favorDynmods: true,
      name: undefined,
      address: undefined,
      runtime: undefined,
      port: 1233,
    },
    audit: { dbAddr: undefined, bufferRows: 100_000, retainDays: 30, retainMB: 1024 },
    snapshots: {
      enabled: true,
      diskMB: 10_240,
      podNamespaces: true,
      podNetSpares: 2,
      podCidr: "10.213.0.0/16",
      start: "auto",
      criuCache: "seed",
    },
    calls: {
      ttlS: 86_400,
      maxBytes: 1_048_576,
      attempts: 3,
      leaseS: 15,
      openMax: 10_000,
      openMaxMB: 256,
      keptMax: 100_000,
      keptMaxMB: 1024,
      callbackAllow: [],
    },
  });
});

Deno.test("readConfig() reads each section from its variables", () => {
  const c = readConfig(envOf({
    RUN_SERVICE: "Scheduler",
    INFERX_SAMPLES: "none",
    ETCD_ADDRS: "http://127.0.0.1:2379",
    SCHEDULER_ADDR: " 127.0.0.1:1238 , 127.0.0.1:1248,",
    SCHEDULER_HTTP_PORT: "1249",
    NODE_TIMEOUT_MS: "6000",
    GATEWAY_PORT: "0",
    NODE_NAME: "gpu-7",
    INFERX_RUNTIME: "process",
    INFERX_WORKER_USER: "65534:65534",
    INFERX_CPU_PROFILE: "/tmp/role-{pid}.cpuprofile",
    INFERX_DATA_DIR: "/var/lib/inferx/",
    GATEWAY_SPILL_MB: "0",
    INFERX_CRIU_CACHE: "off",
    INFERX_CGROUP_FAVOR_DYNMODS: "off",
    INFERX_POD_NETNS_SPARES: "0",
  }));
  assert.equal(c.role, "Scheduler");
  assert.equal(c.samplesDir, undefined);
  assert.equal(c.cpuProfile, `/tmp/role-${Deno.pid}.cpuprofile`);
  assert.equal(c.cluster.etcdAddrs, "http://127.0.0.1:2379");
  assert.deepEqual(c.cluster.schedulerAddrs, ["127.0.0.1:1238", "127.0.0.1:1248"]);
  assert.equal(c.scheduler.httpPort, 1249);
  assert.equal(c.scheduler.nodeTimeoutMs, 6000);
  assert.equal(c.gateway.port, 0);
  assert.equal(c.gateway.spillMb, 0);
  assert.equal(c.gateway.spillDir, "/var/lib/inferx/gateway-spill");
  assert.equal(readConfig(envOf({ GATEWAY_SPILL_DIR: "/spill" })).gateway.spillDir, "/spill");
  assert.equal(c.node.name, "gpu-7");
  assert.equal(c.node.workerUser, "65534:65534");
  assert.equal(c.node.runtime, "process");
  assert.equal(c.snapshots.criuCache, "off");
  assert.equal(c.node.favorDynmods, false);
  assert.equal(c.snapshots.podNetSpares, 0);
});

Deno.test("readConfig() puts AUDITDB_PASSWORD into AUDITDB_ADDR and reads the auth settings", () => {
  const c = readConfig(envOf({
    AUDITDB_ADDR: "postgres://inferx@db:5432/inferx",
    AUDITDB_PASSWORD: "p@ss/word",
    INFERX_ADMIN_APIKEY: "k".repeat(20),
    INFERX_OIDC_JWKS_URL: "http://127.0.0.1:8080/certs",
    INFERX_OIDC_AUDIENCE: "inferx",
  }));
  assert.equal(c.audit.dbAddr, "postgres://inferx:p%40ss%2Fword@db:5432/inferx");
  assert.equal(c.gateway.adminApiKey, "k".repeat(20));
  // A key from a Secret or a file ends in a newline: trimmed, as a bearer carries it.
  const trimmed = readConfig(envOf({ INFERX_ADMIN_APIKEY: `${"k".repeat(20)}\n` }));
  assert.equal(trimmed.gateway.adminApiKey, "k".repeat(20));
  const token = readConfig(envOf({ INFERX_CLUSTER_TOKEN: `${"t".repeat(32)}\n` }));
  assert.equal(token.cluster.clusterToken, "t".repeat(32));
  assert.equal(readConfig(envOf({})).cluster.clusterToken, undefined);
  assert.deepEqual(c.gateway.oidc, {
    jwksUrl: "http://127.0.0.1:8080/certs",
    issuer: undefined,
    audience: "inferx",
  });
  assert.equal(c.audit.bufferRows, 100_000);
  assert.throws(
    () => readConfig(envOf({ AUDITDB_ADDR: "not a url", AUDITDB_PASSWORD: "x" })),
    /AUDITDB_ADDR: is not a postgres:\/\/ URL/,
  );
  // An address that is not one is not echoed: a password may be anywhere in it.
  for (
    const addr of [
      "postgresql+ssl://audit:PGSECRET@db:5432/x",
      "jdbc:postgresql://db:5432/audit?user=audit&password=PGSECRET",
      "db:5432 user=audit password=PGSECRET",
    ]
  ) {
    assert.throws(
      () => readConfig(envOf({ AUDITDB_ADDR: addr })),
      (err: Error) =>
        /AUDITDB_ADDR: is not a postgres/.test(err.message) &&
        !/PGSECRET|db:5432/.test(err.message),
      addr,
    );
  }
  // The user too, from the secret the database was made with.
  const user = readConfig(envOf({
    AUDITDB_ADDR: "postgres://db:5432/inferx",
    AUDITDB_USER: "audit",
    AUDITDB_PASSWORD: "pw",
  }));
  assert.equal(user.audit.dbAddr, "postgres://audit:pw@db:5432/inferx");
});

Deno.test("readConfig() refuses the shipped manifests' placeholder secrets", () => {
  assert.throws(
    () => readConfig(envOf({ INFERX_ADMIN_APIKEY: "change-me-admin-key" })),
    /INFERX_ADMIN_APIKEY: is the manifests' placeholder/,
  );
  assert.throws(
    () =>
      readConfig(envOf({
        AUDITDB_ADDR: "postgres://inferx@db/inferx",
        AUDITDB_PASSWORD: "change-me-db-password",
      })),
    /AUDITDB_PASSWORD: is the manifests' placeholder/,
  );
});

Deno.test("readConfig() refuses a bad value, naming the variable", () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ RUN_SERVICE: "Everything" }, /RUN_SERVICE: "Everything" is not one of All, StateSvc/],
    [{ GATEWAY_PORT: "http" }, /GATEWAY_PORT: "http" is not a non-negative integer/],
    [{ NODE_TIMEOUT_MS: "-5" }, /NODE_TIMEOUT_MS: "-5" is not a non-negative integer/],
    [{ INFERX_CALL_ATTEMPTS: "0" }, /INFERX_CALL_ATTEMPTS: must be above 0/],
    [{ INFERX_CALL_ATTEMPTS: "150" }, /INFERX_CALL_ATTEMPTS: must be 100 at most/],
    [{ INFERX_CALLBACK_ALLOW: "10.0.0.0/8, localhost" }, /INFERX_CALLBACK_ALLOW: "localhost"/],
    [{ INFERX_DATA_DIR: "" }, /INFERX_DATA_DIR: must not be empty/],
    [{ NODE_TIMEOUT_MS: "0" }, /NODE_TIMEOUT_MS: must be above 0/],
    [{ GATEWAY_TIMEOUT_MS: "0" }, /GATEWAY_TIMEOUT_MS: must be above 0/],
    [{ INFERX_BODY_LIMIT: "0" }, /INFERX_BODY_LIMIT: must be above 0/],
    [{ GATEWAY_PORT: "70000" }, /GATEWAY_PORT: is not a port/],
    [{ SCHEDULER_HTTP_PORT: "65536" }, /SCHEDULER_HTTP_PORT: is not a port/],
    [{ GATEWAY_PORT: "0", GATEWAY_WORKERS: "2" }, /GATEWAY_PORT: 0 .* cannot be shared/],
    [{ LOG_LEVEL: "warn" }, /LOG_LEVEL: "warn" is not one of trace, debug, info, warning/],
    [{ INFERX_OIDC_JWKS_URL: "not a url" }, /INFERX_OIDC_JWKS_URL: is not an http\(s\) URL/],
    [
      { INFERX_OIDC_AUDIENCE: "inferx" },
      /INFERX_OIDC_AUDIENCE is set without INFERX_OIDC_JWKS_URL/,
    ],
    [{ AUDITDB_ADDR: "http://db:5432/x" }, /AUDITDB_ADDR: is not a postgres:\/\/ URL/],
    [{ INFERX_RUNTIME: "foo" }, /INFERX_RUNTIME: is not one of auto, process, docker/],
    [{ INFERX_CRIU_CACHE: "no" }, /INFERX_CRIU_CACHE: .*seed, off/],
    [{ INFERX_CGROUP_FAVOR_DYNMODS: "yes" }, /INFERX_CGROUP_FAVOR_DYNMODS: .*on, off/],
    [{ INFERX_POD_NETNS_SPARES: "65" }, /INFERX_POD_NETNS_SPARES: must be at most 64/],
    [{ INFERX_POD_NETNS_SPARES: "-1" }, /INFERX_POD_NETNS_SPARES: "-1" is not a non-negative/],
    [{ INFERX_POD_CIDR: "garbage" }, /INFERX_POD_CIDR: is not an IPv4 range \/16 to \/28/],
    [{ INFERX_POD_CIDR: "10.0.0.0/8" }, /INFERX_POD_CIDR: is not an IPv4 range/],
    // `ip` refuses it in every pod's address: each start on the node would fail.
    [
      { INFERX_POD_CIDR: "10.213.117.64/24" },
      /INFERX_POD_CIDR: "10\.213\.117\.64\/24": its address has bits set past \/24 \(the range is 10\.213\.117\.0\/24\)/,
    ],
    [{ GATEWAY_HOST: "" }, /GATEWAY_HOST: must not be empty/],
    [{ STATESVC_ADDR: "" }, /STATESVC_ADDR: must not be empty/],
    [{ SCHEDULER_ADDR: "" }, /SCHEDULER_ADDR: must not be empty/],
    [{ INFERX_ADMIN_APIKEY: "admin key change me 0123" }, /INFERX_ADMIN_APIKEY: must not contain/],
    [{ INFERX_ADMIN_APIKEY: "short" }, /INFERX_ADMIN_APIKEY: must be at least 16 characters/],
    [
      { INFERX_ADMIN_APIKEY: "ixk_0123456789abcdef" },
      /INFERX_ADMIN_APIKEY: must not begin with ixk_/,
    ],
    // Digits only: Number() took " " for 0 (a port the system picks), "0x10" for 16.
    [{ GATEWAY_PORT: " " }, /GATEWAY_PORT: " " is not a non-negative integer/],
    [{ GATEWAY_PORT: "0x10" }, /GATEWAY_PORT: "0x10" is not a non-negative integer/],
    [{ INFERX_BODY_LIMIT: "1e3" }, /INFERX_BODY_LIMIT: "1e3" is not a non-negative integer/],
    [{ INFERX_BIND: "" }, /INFERX_BIND: must not be empty/],
    [{ NODE_ADDRESS: "10.999.0.1" }, /NODE_ADDRESS: is not an IPv4 address/],
    // Endpoints are ip:port, unbracketed: an IPv6 address would read as one with no port.
    [{ NODE_ADDRESS: "fd00::1" }, /NODE_ADDRESS: is not an IPv4 address/],
    // One segment of its key in the store: a node named so would never be listed.
    [{ NODE_NAME: "a/b" }, /NODE_NAME: is not a node name/],
    [{ NODE_NAME: "  " }, /NODE_NAME: is not a node name/],
    [{ INFERX_METRICS_KEY: "short" }, /INFERX_METRICS_KEY: must be at least 16 characters/],
    [{ INFERX_METRICS_KEY: "scrape-key-0123456789" }, /INFERX_METRICS_KEY is set but auth is off/],
    [
      { INFERX_ADMIN_APIKEY: "admin-key-0123456789", INFERX_METRICS_KEY: "admin-key-0123456789" },
      /INFERX_METRICS_KEY is the admin key/,
    ],
    [
      { INFERX_WORKER_USER: "no body" },
      /INFERX_WORKER_USER: is not a user name, a uid or uid:gid/,
    ],
    // Past a timer's reach (2^31 - 1 ms): a claim's renewal fired at once, an expiry was no date.
    [{ INFERX_CALL_LEASE_S: "3000000" }, /INFERX_CALL_LEASE_S: must be 86,400 s at most/],
    [{ INFERX_CALL_TTL_S: "9000000000000" }, /INFERX_CALL_TTL_S: must be 315,360,000 s at most/],
    [{ GATEWAY_DRAIN_S: "2147479" }, /GATEWAY_DRAIN_S: must be 86,400 s at most/],
    [{ RECLAIM_GRACE_MS: "9000000000" }, /RECLAIM_GRACE_MS: must be 86,400,000 ms at most/],
    [{ GATEWAY_WORKERS: "0x2" }, /GATEWAY_WORKERS: "0x2" is not an integer from 1 to 256/],
    [{ GATEWAY_WORKERS: " 2" }, /GATEWAY_WORKERS: " 2" is not an integer/],
    [{ GATEWAY_WORKERS: "1e0" }, /GATEWAY_WORKERS: "1e0" is not an integer/],
    [{ SCHEDULER_ADDR: "," }, /SCHEDULER_ADDR: names no address/],
    [{ INFERX_SAMPLES: "" }, /INFERX_SAMPLES: must not be empty/],
    // A blank secret (an empty file mounted) would turn auth off unseen.
    [{ INFERX_ADMIN_APIKEY: " \n" }, /INFERX_ADMIN_APIKEY: is blank/],
    [{ INFERX_CLUSTER_TOKEN: "short" }, /INFERX_CLUSTER_TOKEN: must be at least 16 characters/],
    [
      { INFERX_CLUSTER_TOKEN: "change-me-cluster-token" },
      /INFERX_CLUSTER_TOKEN: is the manifests'/,
    ],
    [{ INFERX_CLUSTER_TOKEN: "two words 0123456789" }, /INFERX_CLUSTER_TOKEN: must not contain/],
  ];
  for (const [vars, want] of cases) {
    assert.throws(() => readConfig(envOf(vars)), (e: Error & { code?: string }) => {
      assert.equal(e.code, "invalid");
      assert.match(e.message, want);
      return true;
    });
  }
});

Deno.test("readConfig() reads the asynchronous calls' settings", () => {
  const c = readConfig(envOf({
    INFERX_CALL_TTL_S: "60",
    INFERX_CALL_MAX_BYTES: "4096",
    INFERX_CALL_ATTEMPTS: "5",
    INFERX_CALL_LEASE_S: "2",
    INFERX_CALL_OPEN_MAX: "50",
    INFERX_CALL_OPEN_MAX_MB: "0",
    INFERX_CALL_KEPT_MAX: "7",
    INFERX_CALL_KEPT_MAX_MB: "3",
    INFERX_CALLBACK_ALLOW: "127.0.0.1,::1",
  }));
  assert.deepEqual(c.calls, {
    ttlS: 60,
    maxBytes: 4096,
    attempts: 5,
    leaseS: 2,
    openMax: 50,
    openMaxMB: 0,
    keptMax: 7,
    keptMaxMB: 3,
    callbackAllow: [
      { address: "127.0.0.1", prefix: 32, family: "ipv4" },
      { address: "::1", prefix: 128, family: "ipv6" },
    ],
  });
});

Deno.test("CONFIG_ENV lists every variable the configuration reads, and only those", () => {
  const read = new Set<string>();
  readConfig((k) => (read.add(k), undefined));
  assert.deepEqual([...read].sort(), [...CONFIG_ENV].sort());
  assert.ok(CONFIG_ENV.includes("NODE_NAME") && CONFIG_ENV.includes("AUDITDB_PASSWORD"));
});

Deno.test("loadNodeConfig() applies NODE_NAME, NODE_ADDRESS and INFERX_RUNTIME over node.json", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/node.json`;
    await Deno.writeTextFile(path, JSON.stringify({ name: "a", cpuMillis: 2000, memMB: 512 }));
    const plain = await loadNodeConfig(readConfig(envOf({ NODE_CONFIG: path })).node);
    assert.deepEqual([plain.name, plain.address, plain.runtime, plain.cpuMillis], [
      "a",
      "127.0.0.1",
      "auto",
      2000,
    ]);
    const over = await loadNodeConfig(
      readConfig(envOf({
        NODE_CONFIG: path,
        NODE_NAME: "b",
        NODE_ADDRESS: "10.0.0.7",
        INFERX_RUNTIME: "process",
      })).node,
    );
    assert.deepEqual([over.name, over.address, over.runtime], ["b", "10.0.0.7", "process"]);
    const missing = await loadNodeConfig({ configPath: `${dir}/none.json`, port: 0 });
    assert.equal(missing.name, "node1", "a missing node.json gives the defaults");
    // Unless NODE_CONFIG named it: a typo of the path is said, not taken for no file.
    await assert.rejects(
      loadNodeConfig(readConfig(envOf({ NODE_CONFIG: `${dir}/node.gpu.json` })).node),
      /NODE_CONFIG: .*node\.gpu\.json does not exist/,
    );
    // Keys it does not know (a misspelling) and an address that is no IP address are refused.
    await Deno.writeTextFile(path, JSON.stringify({ cpumillis: 1000 }));
    await assert.rejects(loadNodeConfig({ configPath: path, port: 0 }), /cpumillis/);
    await Deno.writeTextFile(path, JSON.stringify({ address: "node-a.local" }));
    await assert.rejects(
      loadNodeConfig({ configPath: path, port: 0 }),
      /address: is not an IPv4 address/,
    );
    await Deno.writeTextFile(path, JSON.stringify({ name: "a/b" }));
    await assert.rejects(loadNodeConfig({ configPath: path, port: 0 }), /name: is not a node name/);
    const gpu = { type: "H100", vramMB: 80_000 };
    await Deno.writeTextFile(
      path,
      JSON.stringify({ gpus: [{ index: 0, ...gpu }, { index: 0, ...gpu }] }),
    );
    await assert.rejects(
      loadNodeConfig({ configPath: path, port: 0 }),
      /gpus: two GPUs have the same index/,
    );
    await Deno.writeTextFile(path, JSON.stringify({ cpuMillis: 0 }));
    await assert.rejects(
      loadNodeConfig({ configPath: path, port: 0 }),
      /Invalid node config .*node\.json: cpuMillis: /,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readConfig() reads the gateway group and refuses bad sizes and memberships", () => {
  const token = "ab".repeat(32);
  const c = readConfig(envOf({
    GATEWAY_WORKERS: "4",
    INFERX_GATEWAY_GROUP: "1:4101,4102",
    INFERX_GATEWAY_GROUP_TOKEN: token,
  }));
  assert.equal(c.gateway.workers, 4);
  assert.deepEqual(c.gateway.group, { index: 1, ports: [4101, 4102], token });
  for (
    const [env, re] of [
      [{ GATEWAY_WORKERS: "0" }, /GATEWAY_WORKERS: "0" is not an integer from 1 to 256/],
      [{ GATEWAY_WORKERS: "many" }, /GATEWAY_WORKERS/],
      [{ INFERX_GATEWAY_GROUP: "2:4101,4102" }, /INFERX_GATEWAY_GROUP/],
      [{ INFERX_GATEWAY_GROUP: "0:" }, /INFERX_GATEWAY_GROUP/],
      [{ INFERX_GATEWAY_GROUP: "1:4101,4102" }, /INFERX_GATEWAY_GROUP_TOKEN: the group's secret/],
      [
        { INFERX_GATEWAY_GROUP: "1:4101,4102", INFERX_GATEWAY_GROUP_TOKEN: "short" },
        /INFERX_GATEWAY_GROUP_TOKEN/,
      ],
    ] as [Record<string, string>, RegExp][]
  ) {
    assert.throws(() => readConfig(envOf(env)), re);
  }
});

Deno.test("readConfig() reads the embedded audit's retention, 0 meaning no limit", () => {
  const set = readConfig(envOf({ AUDIT_RETAIN_DAYS: "7", AUDIT_RETAIN_MB: "0" }));
  assert.deepEqual([set.audit.retainDays, set.audit.retainMB], [7, 0]);
  assert.throws(() => readConfig(envOf({ AUDIT_RETAIN_MB: "-1" })), /AUDIT_RETAIN_MB/);
});

Deno.test("readConfig() reads DOCKER_HOST for the node agent, and refuses no kind of it", () => {
  for (const v of ["unix:///run/user/1000/docker.sock", "tcp://10.0.0.1:2375"]) {
    assert.equal(readConfig(envOf({ DOCKER_HOST: v })).node.dockerHost, v);
  }
});

Deno.test("readConfig() reads the host directories containers may mount, and refuses others", () => {
  assert.deepEqual(readConfig(envOf({})).node.mountAllow, []);
  assert.deepEqual(
    readConfig(envOf({ INFERX_MOUNT_ALLOW: "/models/, /data/weights:ro, /scratch:rw" })).node
      .mountAllow,
    [
      { dir: "/models", rw: false },
      { dir: "/data/weights", rw: false },
      { dir: "/scratch", rw: true },
    ],
  );
  for (const bad of ["models", "/a/../etc", "/a:rx", "/a:b:rw"]) {
    assert.throws(
      () => readConfig(envOf({ INFERX_MOUNT_ALLOW: bad })),
      /INFERX_MOUNT_ALLOW: .* is not an absolute directory/,
    );
  }
});

Deno.test("dataDirProblem() names INFERX_DATA_DIR when it is a file, not when it is not there yet", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assert.equal(dataDirProblem(dir), undefined);
    assert.equal(dataDirProblem(`${dir}/later`), undefined, "each role makes it");
    await Deno.writeTextFile(`${dir}/file`, "");
    assert.equal(
      dataDirProblem(`${dir}/file`),
      `Invalid configuration: INFERX_DATA_DIR: ${dir}/file is not a directory`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
