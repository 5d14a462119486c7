/**
 * Applies the sample objects in a directory (JSON files, each an object or an
 * array of objects) through the {@linkcode StateService}, each once: what is
 * missing and was never created is created; what exists is left as it is, so
 * user changes survive restarts, and what was created once and then deleted
 * stays deleted (the ids created are recorded in the store).
 *
 * @module
 */
import { AlreadyExistsError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import type { ObjectInput } from "../rpc/types.ts";
import type { UserType } from "../model/keys.ts";
import type { StateService } from "./service.ts";

const ORDER: UserType[] = ["tenant", "namespace", "funcpolicy", "function"];

const idOf = (o: ObjectInput) => `${o.type}/${o.tenant}/${o.namespace}/${o.name}`;

/**
 * Creates the objects of `dir` that do not exist and were never created
 * before; returns how many it created.
 */
export async function applySamples(meta: StateService, dir: string): Promise<number> {
  const inputs: ObjectInput[] = [];
  const files: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(".json")) files.push(e.name);
  }
  for (const f of files.sort()) {
    const parsed = JSON.parse(await Deno.readTextFile(`${dir}/${f}`));
    inputs.push(...(Array.isArray(parsed) ? parsed : [parsed]));
  }
  inputs.sort((a, b) => ORDER.indexOf(a.type as UserType) - ORDER.indexOf(b.type as UserType));
  const record = await meta.samplesCreated();
  const done = new Set(record.ids);
  let created = 0;
  let skipped = 0;
  for (const input of inputs) {
    if (done.has(idOf(input))) {
      skipped++;
      continue;
    }
    try {
      await meta.create(input);
      created++;
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err;
    }
    done.add(idOf(input));
  }
  if (done.size > record.ids.length) await meta.recordSamples([...done], record.revision);
  logger("statesvc").info(
    "Samples from {dir}: {created} created, {kept} already there, {skipped} created before",
    { dir, created, kept: inputs.length - created - skipped, skipped },
  );
  return created;
}
