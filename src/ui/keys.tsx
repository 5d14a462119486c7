/**
 * API keys: the keys the caller may manage, a form that creates one (its
 * secret is shown once, by the browser, from the API's answer), and revoke
 * buttons. Both actions are calls of `/apikeys` with the tab's credential.
 *
 * @module
 */
import { Empty } from "./layout.tsx";

/** A key as `GET /apikeys` lists it. */
export interface KeyView {
  id: string;
  name: string;
  scope: string;
  tenant: string | null;
  namespace: string | null;
  expires_at: string | null;
  created_at: string;
  created_by: string;
}

/** The keys table (reloaded after each change). */
export function KeysTable(props: { keys: KeyView[] }) {
  if (!props.keys.length) return <Empty>No API keys you may manage.</Empty>;
  return (
    <table class="grid keys">
      <thead>
        <tr>
          <th>Id</th>
          <th>Name</th>
          <th>Scope</th>
          <th>Over</th>
          <th>Created</th>
          <th>By</th>
          <th>Expires</th>
          <th></th>
        </tr>
      </thead>
      <tbody>
        {props.keys.map((k) => (
          <tr data-key-id={k.id}>
            <td class="mono">{k.id}</td>
            <td>{k.name}</td>
            <td>{k.scope}</td>
            <td>
              {k.tenant === null
                ? "everything"
                : k.namespace === null
                ? `tenant ${k.tenant}`
                : `${k.tenant}/${k.namespace}`}
            </td>
            <td class="small">{k.created_at}</td>
            <td class="mono">{k.created_by}</td>
            <td class="small">{k.expires_at ?? "never"}</td>
            <td>
              <button type="button" class="danger" data-action="revoke" data-key-id={k.id}>
                Revoke
              </button>
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/** The API keys page's part. */
export function KeysPage(props: { keys: KeyView[] }) {
  return (
    <>
      <h1>API keys</h1>
      <section class="card">
        <h2>New key</h2>
        <form id="key-form" class="row-form">
          <label>
            Name <input type="text" name="name" maxlength={128} />
          </label>
          <label>
            Scope{" "}
            <select name="scope">
              <option value="inference">inference</option>
              <option value="read">read</option>
              <option value="full">full</option>
            </select>
          </label>
          <label>
            Tenant <input type="text" name="tenant" placeholder="every tenant (administrator)" />
          </label>
          <label>
            Namespace <input type="text" name="namespace" placeholder="every namespace of it" />
          </label>
          <label>
            Expires in (days){" "}
            <input type="number" name="expires_days" min="0.001" max="3650" step="any" />
          </label>
          <button type="submit" class="primary">Create</button>
        </form>
        <div id="new-key" class="new-key" hidden>
          <p>
            New key <span class="mono new-key-id"></span>: copy it now, it is not shown again.
          </p>
          <pre class="code new-key-secret"></pre>
        </div>
      </section>
      <section class="card">
        <h2>Keys</h2>
        <div data-reload="/ui/part/keys/table">
          <KeysTable keys={props.keys} />
        </div>
      </section>
    </>
  );
}
