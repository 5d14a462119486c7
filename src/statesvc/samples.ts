/**
 * Applies the sample objects in a directory (JSON files, each an object or an
 * array of objects) through a {@linkcode MetaClient}, creating what is
 * missing and leaving what exists, so user changes survive restarts.
 *
 * @module
 */
import { AlreadyExistsError } from "../common/errors.ts";
import { logger } from "../common/log.ts";
import type { MetaClient, ObjectInput } from "../rpc/types.ts";
import type { UserType } from "../model/keys.ts";

const ORDER: UserType[] = ["tenant", "namespace", "funcpolicy", "function"];

/** Creates the objects of `dir` that do not exist yet; returns how many it created. */
export async function applySamples(meta: MetaClient, dir: string): Promise<number> {
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
  let created = 0;
  for (const input of inputs) {
    try {
      await meta.create(input);
      created++;
    } catch (err) {
      if (!(err instanceof AlreadyExistsError)) throw err;
    }
  }
  logger("statesvc").info("Samples from {dir}: {created} created, {kept} already there", {
    dir,
    created,
    kept: inputs.length - created,
  });
  return created;
}
