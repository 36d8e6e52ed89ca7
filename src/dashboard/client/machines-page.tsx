import { useEffect, useRef, useState } from 'preact/hooks';
import { getJson, RequestError } from './api.ts';
import { ErrorNote } from './components.tsx';
import { formatBytes, formatDateTime, formatDuration } from './format.ts';
import { useNow, useSessionEvents } from './live.ts';
import type { MachinesView } from './shapes.ts';

/** What `torpor ps -a` and `torpor snapshots ls` show, with each snapshot's shared and exclusive bytes. */
export function MachinesPage() {
  const [view, setView] = useState<MachinesView>();
  const [error, setError] = useState<RequestError>();
  const now = useNow();
  // Each session change asks again; only the newest request's answer is shown.
  const latest = useRef(0);
  const load = () => {
    const request = ++latest.current;
    return getJson<MachinesView>('/ui/api/machines').then(
      (body) => request === latest.current && setView(body),
      (reason: RequestError) => request === latest.current && setError(reason),
    );
  };
  useEffect(() => void load(), []);
  // Machines come and go with session states: refresh when one changes.
  useSessionEvents(() => void load());
  if (!view) return error ? <ErrorNote error={error} /> : <p class="loading">Loading machines…</p>;
  return (
    <section aria-labelledby="machines-title">
      <h1 id="machines-title">Machines</h1>
      <ErrorNote error={error} />
      {view.machines.length === 0 ? (
        <p class="empty">No machines. Sessions that hibernate have none until they wake.</p>
      ) : (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Image</th>
                <th scope="col">State</th>
                <th scope="col" class="number">
                  CPUs
                </th>
                <th scope="col" class="number">
                  Memory
                </th>
                <th scope="col" class="number">
                  Uptime
                </th>
                <th scope="col">Accel</th>
              </tr>
            </thead>
            <tbody>
              {view.machines.map((machine) => (
                <tr key={machine.id}>
                  <th scope="row" data-label="Name">
                    {machine.name}
                    <div class="muted mono">{machine.id}</div>
                  </th>
                  <td data-label="Image" class="mono">
                    {machine.image}
                  </td>
                  <td data-label="State">
                    <span class={`badge machine-${machine.status}`}>{machine.status}</span>
                    {machine.exitCode !== undefined && <span class="muted"> ({machine.exitCode})</span>}
                    {machine.error && <div class="muted">{machine.error}</div>}
                  </td>
                  <td data-label="CPUs" class="number">
                    {machine.cpus}
                  </td>
                  <td data-label="Memory" class="number">
                    {machine.memoryMiB} MiB
                  </td>
                  <td data-label="Uptime" class="number">
                    {machine.status === 'running' && machine.startedAt ? formatDuration(now - Date.parse(machine.startedAt)) : '–'}
                  </td>
                  <td data-label="Accel">{machine.accelerator}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <h2>Snapshots</h2>
      <p class="muted">
        Store: {view.store.chunks} chunks, {formatBytes(view.store.bytes)} compressed. Shared bytes are held together with other snapshots (layers, forks);
        exclusive bytes are what removing the snapshot would free.
      </p>
      {view.snapshots.length === 0 ? (
        <p class="empty">No snapshots.</p>
      ) : (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Created</th>
                <th scope="col">Machine</th>
                <th scope="col" class="number">
                  Memory
                </th>
                <th scope="col" class="number">
                  New
                </th>
                <th scope="col" class="number">
                  Shared
                </th>
                <th scope="col" class="number">
                  Exclusive
                </th>
                <th scope="col">Usage</th>
              </tr>
            </thead>
            <tbody>
              {view.snapshots.map((snapshot) => (
                <tr key={snapshot.name}>
                  <th scope="row" data-label="Name" class="mono">
                    {snapshot.name}
                    {snapshot.parent && <div class="muted">on {snapshot.parent}</div>}
                  </th>
                  <td data-label="Created">{formatDateTime(snapshot.createdAt)}</td>
                  <td data-label="Machine">{snapshot.machine ?? '–'}</td>
                  <td data-label="Memory" class="number">
                    {formatBytes(snapshot.memoryBytes)}
                  </td>
                  <td data-label="New" class="number">
                    {formatBytes(snapshot.newBytes)}
                  </td>
                  <td data-label="Shared" class="number">
                    {formatBytes(snapshot.sharedBytes)}
                  </td>
                  <td data-label="Exclusive" class="number">
                    {formatBytes(snapshot.exclusiveBytes)}
                  </td>
                  <td data-label="Usage">
                    <span
                      class="share-bar"
                      role="img"
                      aria-label={`${formatBytes(snapshot.sharedBytes)} shared, ${formatBytes(snapshot.exclusiveBytes)} exclusive`}
                    >
                      <span class="shared" style={{ width: `${snapshot.referencedBytes ? (snapshot.sharedBytes / snapshot.referencedBytes) * 100 : 0}%` }} />
                      <span
                        class="exclusive"
                        style={{ width: `${snapshot.referencedBytes ? (snapshot.exclusiveBytes / snapshot.referencedBytes) * 100 : 0}%` }}
                      />
                    </span>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}
