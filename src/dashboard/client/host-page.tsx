import { useEffect, useState } from 'preact/hooks';
import { getJson, RequestError } from './api.ts';
import { ErrorNote } from './components.tsx';
import { DataTable, type Column } from './data-table.tsx';
import { formatBytes } from './format.ts';
import type { HostView } from './shapes.ts';

function Usage({ label, total, free }: { label: string; total: number; free: number }) {
  const used = total - free;
  return (
    <div class="usage">
      <div>
        {label}: {formatBytes(used)} used of {formatBytes(total)} ({formatBytes(free)} free)
      </div>
      <progress max={total} value={used} aria-label={`${label} used`} />
    </div>
  );
}

const doctorColumns: Column<HostView['doctor'][number]>[] = [
  { label: 'Check', rowHeader: true, cell: (check) => check.name },
  { label: 'OK', cell: (check) => (check.ok ? 'yes' : 'NO') },
  {
    label: 'Detail',
    cell: (check) => (
      <>
        {check.detail}
        {check.fix && (
          <div class="fix">
            fix: <code>{check.fix}</code>
          </div>
        )}
      </>
    ),
  },
];

/** The host: CPU and load, RAM, the tmpfs guest RAM lives in, the snapshot store, the accelerator and `torpor doctor`. */
export function HostPage() {
  const [view, setView] = useState<HostView>();
  const [error, setError] = useState<RequestError>();
  useEffect(() => void getJson<HostView>('/ui/api/host').then(setView, setError), []);
  if (!view) return error ? <ErrorNote error={error} /> : <p class="loading">Checking the host (the first time can take a few seconds)…</p>;
  return (
    <section aria-labelledby="host-title">
      <h1 id="host-title">Host</h1>
      <div class="cards">
        <article class="card">
          <h2>CPU</h2>
          <p>
            {view.cpu.count} × {view.cpu.model}
          </p>
          <p class="muted">load {view.cpu.loadAverage.map((value) => value.toFixed(2)).join(' / ')} (1, 5, 15 min)</p>
          <Usage label="RAM" total={view.memory.totalBytes} free={view.memory.freeBytes} />
        </article>
        <article class="card">
          <h2>Accelerator</h2>
          {'name' in view.accelerator ? (
            <>
              <p>
                <strong class="accelerator">{view.accelerator.name}</strong>
                {view.accelerator.name === 'tcg' ? ' (software emulation)' : ''}
              </p>
              <p class="muted">{view.accelerator.reason}</p>
            </>
          ) : (
            <p class="error">{view.accelerator.error}</p>
          )}
        </article>
        <article class="card">
          <h2>Guest RAM (tmpfs)</h2>
          <p class="mono">{view.tmpfs.path}</p>
          {'error' in view.tmpfs ? <p class="error">{view.tmpfs.error}</p> : <Usage label="tmpfs" total={view.tmpfs.totalBytes} free={view.tmpfs.freeBytes} />}
        </article>
        <article class="card">
          <h2>Snapshot store</h2>
          <p class="mono">{view.store.path}</p>
          <p>
            {view.store.chunks} chunks, {formatBytes(view.store.bytes)}
          </p>
          {view.store.diskTotalBytes !== undefined && <Usage label="disk" total={view.store.diskTotalBytes} free={view.store.diskFreeBytes ?? 0} />}
        </article>
      </div>
      <h2>Doctor</h2>
      <ErrorNote error={error} />
      <DataTable
        class="doctor"
        columns={doctorColumns}
        items={view.doctor}
        rowKey={(check) => check.name}
        rowAttributes={(check) => ({ class: check.ok ? 'ok' : 'not-ok' })}
      />
    </section>
  );
}
