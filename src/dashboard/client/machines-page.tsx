import { useEffect, useRef, useState } from 'preact/hooks';
import { getJson, RequestError } from './api.ts';
import { ErrorNote } from './components.tsx';
import { DataTable, type Column } from './data-table.tsx';
import { formatBytes, formatDateTime, formatDuration } from './format.ts';
import { useNow, useSessionEvents } from './live.ts';
import type { MachineRow, MachinesView, SnapshotRow } from './shapes.ts';

function machineColumns(now: number): Column<MachineRow>[] {
  return [
    {
      label: 'Name',
      rowHeader: true,
      cell: (machine) => (
        <>
          {machine.name}
          <div class="muted mono">{machine.id}</div>
        </>
      ),
    },
    { label: 'Image', class: 'mono', cell: (machine) => machine.image },
    {
      label: 'State',
      cell: (machine) => (
        <>
          <span class={`badge machine-${machine.status}`}>{machine.status}</span>
          {machine.exitCode !== undefined && <span class="muted"> ({machine.exitCode})</span>}
          {machine.error && <div class="muted">{machine.error}</div>}
        </>
      ),
    },
    { label: 'CPUs', number: true, cell: (machine) => machine.cpus },
    { label: 'Memory', number: true, cell: (machine) => <>{machine.memoryMiB} MiB</> },
    {
      label: 'Uptime',
      number: true,
      cell: (machine) => (machine.status === 'running' && machine.startedAt ? formatDuration(now - Date.parse(machine.startedAt)) : '–'),
    },
    { label: 'Accel', cell: (machine) => machine.accelerator },
  ];
}

const snapshotColumns: Column<SnapshotRow>[] = [
  {
    label: 'Name',
    rowHeader: true,
    class: 'mono',
    cell: (snapshot) => (
      <>
        {snapshot.name}
        {snapshot.parent && <div class="muted">on {snapshot.parent}</div>}
      </>
    ),
  },
  { label: 'Created', cell: (snapshot) => formatDateTime(snapshot.createdAt) },
  { label: 'Machine', cell: (snapshot) => snapshot.machine ?? '–' },
  { label: 'Memory', number: true, cell: (snapshot) => formatBytes(snapshot.memoryBytes) },
  { label: 'New', number: true, cell: (snapshot) => formatBytes(snapshot.newBytes) },
  { label: 'Shared', number: true, cell: (snapshot) => formatBytes(snapshot.sharedBytes) },
  { label: 'Exclusive', number: true, cell: (snapshot) => formatBytes(snapshot.exclusiveBytes) },
  {
    label: 'Usage',
    cell: (snapshot) => (
      <span class="share-bar" role="img" aria-label={`${formatBytes(snapshot.sharedBytes)} shared, ${formatBytes(snapshot.exclusiveBytes)} exclusive`}>
        <span class="shared" style={{ width: `${snapshot.referencedBytes ? (snapshot.sharedBytes / snapshot.referencedBytes) * 100 : 0}%` }} />
        <span class="exclusive" style={{ width: `${snapshot.referencedBytes ? (snapshot.exclusiveBytes / snapshot.referencedBytes) * 100 : 0}%` }} />
      </span>
    ),
  },
];

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
        <DataTable columns={machineColumns(now)} items={view.machines} rowKey={(machine) => machine.id} />
      )}
      <h2>Snapshots</h2>
      <p class="muted">
        Store: {view.store.chunks} chunks, {formatBytes(view.store.bytes)} compressed. Shared bytes are held together with other snapshots (layers, forks);
        exclusive bytes are what removing the snapshot would free.
      </p>
      {view.snapshots.length === 0 ? (
        <p class="empty">No snapshots.</p>
      ) : (
        <DataTable columns={snapshotColumns} items={view.snapshots} rowKey={(snapshot) => snapshot.name} />
      )}
    </section>
  );
}
