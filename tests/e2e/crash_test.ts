/**
 * Crash safety of the embedded store and audit: `RUN_SERVICE=All` is killed
 * with SIGKILL while it creates and updates objects and writes audit rows,
 * twice. After each kill both SQLite databases pass `PRAGMA integrity_check`,
 * and the restarted platform has every object whose write was acknowledged
 * (a 2xx answer), with the value acknowledged or a later one.
 */
import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { createNamespace, type Json, putObject, request, startPlatform } from "./helpers.ts";

const policy = (name: string, queueLen: number, revision?: number) => ({
  type: "funcpolicy",
  tenant: "t",
  namespace: "n",
  name,
  revision,
  object: { spec: { queue_len: queueLen } },
});

function integrity(path: string): string {
  const db = new DatabaseSync(path);
  try {
    const rows = db.prepare("pragma integrity_check").all() as { integrity_check: string }[];
    return rows.map((r) => r.integrity_check).join("; ");
  } finally {
    db.close();
  }
}

Deno.test({
  name: "All killed with SIGKILL mid-write keeps every acknowledged object and sound databases",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    let p = await startPlatform({ LOG_LEVEL: "warning" });
    const dir = p.dataDir;
    /** Acknowledged creates: name -> queue_len (at least 1). */
    const created = new Map<string, number>();
    /** The last acknowledged update of the counter policy. */
    let counter = { revision: 0, value: 0 };
    let audited = 0;
    try {
      await createNamespace(p.url, "t", "n");
      const first = await putObject(p.url, policy("counter", 1));
      assert.equal(first.status, 201, JSON.stringify(first.body));
      counter = { revision: first.body.revision, value: 1 };

      for (let round = 0; round < 2; round++) {
        let on = true;
        const url = p.url;
        const creator = async (w: number) => {
          for (let i = 1; on; i++) {
            const name = `p${round}-${w}-${i}`;
            const r = await putObject(url, policy(name, i)).catch(() => undefined);
            if (r?.status === 201) created.set(name, i);
          }
        };
        const updater = async () => {
          while (on) {
            const next = counter.value + 1;
            const r = await request(`${url}/object/`, {
              body: policy("counter", next, counter.revision),
            }).catch(() => undefined);
            if (r?.status === 200) counter = { revision: r.body.revision, value: next };
          }
        };
        const caller = async () => {
          for (let i = 0; on; i++) {
            // An unknown function: a 404 the gateway writes to the audit.
            const r = await fetch(`${url}/funccall/t/n/missing-${i}/x`).catch(() => undefined);
            await r?.body?.cancel();
            if (r?.status === 404) audited++;
          }
        };
        const load = Promise.all([creator(0), creator(1), creator(2), updater(), caller()]);
        const before = created.size;
        const t0 = Date.now();
        while (created.size - before < 150 && Date.now() - t0 < 20_000) {
          await new Promise((r) => setTimeout(r, 50));
        }
        // Kill it while the writers are in the middle of their requests.
        p.proc.kill("SIGKILL");
        await p.proc.status;
        on = false;
        await load;
        await p.stop();

        for (const db of ["store/meta.db", "audit/audit.db"]) {
          assert.equal(integrity(`${dir}/${db}`), "ok", `${db} after SIGKILL in round ${round}`);
        }

        p = await startPlatform({ LOG_LEVEL: "warning" }, dir);
        const { items } = (await request(`${p.url}/objects/funcpolicy/t/n`)).body as {
          items: Json[];
        };
        const stored = new Map(items.map((o) => [o.name, o]));
        const missing = [...created.keys()].filter((n) => !stored.has(n));
        assert.deepEqual(missing, [], `acknowledged objects lost in round ${round}`);
        for (const [name, value] of created) {
          assert.equal(stored.get(name).object.spec.queue_len, value, name);
        }
        const c = stored.get("counter");
        assert.ok(
          c.revision >= counter.revision && c.object.spec.queue_len >= counter.value,
          `counter at ${c.object.spec.queue_len} (rev ${c.revision}), acknowledged ${counter.value} (rev ${counter.revision})`,
        );
        counter = { revision: c.revision, value: c.object.spec.queue_len };
      }
      const rows = await request(`${p.url}/audit/requests?tenant=t&limit=10000`);
      assert.equal(rows.status, 200);
      assert.ok(
        rows.body.items.length > 0 && rows.body.items.length <= audited,
        `${rows.body.items.length} audit rows of ${audited} answered calls survived the kills`,
      );
      console.log(
        `${created.size} acknowledged creates and counter ${counter.value} kept; ` +
          `${rows.body.items.length} of ${audited} audit rows written before the kills`,
      );
    } finally {
      await p.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
