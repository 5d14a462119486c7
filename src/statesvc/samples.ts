/**
 * Applies the sample objects in a directory (JSON or YAML files, as `ctl
 * apply` reads them: `model/object_files.ts`) through the
 * {@linkcode StateService}, each once: what is
 * missing and was never created is created; what exists is left as it is, so
 * user changes survive restarts, and what was created once and then deleted
 * stays deleted (the ids created are recorded in the store).
 *
 * @module
 */
import { AlreadyExistsError, ValidationError } from "../common/errors.ts";
import { appliedForm, ObjectFileError, readObjectFiles } from "../model/object_files.ts";
import { logger } from "../common/log.ts";
import type { ObjectInput } from "../rpc/types.ts";
import type { StateService } from "./service.ts";

const idOf = (o: ObjectInput) => `${o.type}/${o.tenant}/${o.namespace}/${o.name}`;

/**
 * Creates the objects of `dir` that do not exist and were never created
 * before; returns how many it created.
 */
export async function applySamples(meta: StateService, dir: string): Promise<number> {
  let inputs: ObjectInput[];
  try {
    // Made as `ctl apply` makes them: applied again from the same files, they are unchanged.
    inputs = (await readObjectFiles([dir], { allowNone: true })).map(appliedForm) as ObjectInput[];
  } catch (err) {
    // A file that names no object, or cannot be read: said with its name and the setting.
    if (!(err instanceof ObjectFileError)) throw err;
    throw new ValidationError(`Invalid samples (INFERX_SAMPLES): ${err.message}`, "INFERX_SAMPLES");
  }
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
      // An object the store refuses: said with the setting it came from.
      if (err instanceof ValidationError) {
        throw new ValidationError(
          `Invalid samples (INFERX_SAMPLES=${dir}): ${err.message}`,
          "INFERX_SAMPLES",
        );
      }
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
