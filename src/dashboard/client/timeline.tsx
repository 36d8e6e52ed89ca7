import { useEffect, useRef } from 'preact/hooks';
import { TableHead } from './data-table.tsx';
import { formatBytes, formatDuration, formatTime } from './format.ts';
import type { SessionTimeline, StateSpan } from './shapes.ts';

// The open span ends now; the page's clock ticks once a second, so never end before the span began.
const end = (span: StateSpan, now: number) => (span.to ? Date.parse(span.to) : Math.max(now, Date.parse(span.from)));

/**
 * The machine's life: a proportional bar of its states (for the eye) and the same spans as a list
 * with times and durations (for reading and for screen readers), with snapshots, crashes and
 * recoveries in their place.
 */
export function Timeline({ timeline, now }: { timeline: SessionTimeline; now: number }) {
  const { spans, marks } = timeline;
  const list = useRef<HTMLOListElement>(null);
  // The newest span is the one people look for: keep the list scrolled to its end as it grows.
  useEffect(() => {
    if (list.current) list.current.scrollTop = list.current.scrollHeight;
  }, [spans.length, marks.length]);
  if (spans.length === 0) return <p class="empty">No history recorded for this session yet.</p>;
  const start = Date.parse(spans[0]!.from);
  const total = Math.max(1, now - start);
  const items = [
    ...spans.map((span) => ({ at: span.from, node: <SpanItem key={`span-${span.from}-${span.state}`} span={span} now={now} /> })),
    ...marks.map((mark) => ({
      at: mark.at,
      node: (
        <li key={`mark-${mark.at}-${mark.kind}-${mark.label}`} class={`mark mark-${mark.kind}`} data-kind={mark.kind}>
          <time dateTime={mark.at}>{formatTime(mark.at)}</time> <span class="tag">{mark.kind}</span> {mark.label}
        </li>
      ),
    })),
  ].sort((a, b) => a.at.localeCompare(b.at));
  return (
    <div class="timeline">
      <div class="timeline-bar" aria-hidden="true">
        {spans.map((span) => (
          <span
            class={`segment state-${span.state}`}
            style={{
              left: `${((Date.parse(span.from) - start) / total) * 100}%`,
              width: `${Math.max(0.4, ((end(span, now) - Date.parse(span.from)) / total) * 100)}%`,
            }}
            title={`${span.state} ${formatDuration(end(span, now) - Date.parse(span.from))}`}
          />
        ))}
      </div>
      <ol class="timeline-list" aria-label="Machine timeline" ref={list} tabIndex={0}>
        {items.map((item) => item.node)}
      </ol>
    </div>
  );
}

function SpanItem({ span, now }: { span: StateSpan; now: number }) {
  const duration = end(span, now) - Date.parse(span.from);
  return (
    <li class="span" data-state={span.state}>
      <time dateTime={span.from}>{formatTime(span.from)}</time> <span class={`badge state-${span.state}`}>{span.state}</span>{' '}
      {span.to ? formatDuration(duration) : `for ${formatDuration(duration)} (now)`}
      {span.wakeAt && <span class="muted"> · rate-limit sleep until {formatTime(span.wakeAt)}</span>}
    </li>
  );
}

/** Stored bytes (bars) and wake latency (dots) per turn, as an SVG chart plus the table it draws. */
export function TurnChart({ timeline }: { timeline: SessionTimeline }) {
  const turns = timeline.turns;
  if (turns.length === 0) return <p class="empty">No finished turns yet.</p>;
  const width = 600;
  const height = 180;
  const pad = { left: 56, right: 56, top: 12, bottom: 28 };
  const innerWidth = width - pad.left - pad.right;
  const innerHeight = height - pad.top - pad.bottom;
  const maxBytes = Math.max(1, ...turns.map((turn) => turn.storedBytes ?? 0));
  const maxWake = Math.max(1, ...turns.map((turn) => turn.wakeMilliseconds ?? 0));
  const step = innerWidth / turns.length;
  const x = (index: number) => pad.left + step * index + step / 2;
  return (
    <figure class="chart">
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-labelledby="chart-title">
        <title id="chart-title">Stored bytes and wake time per turn</title>
        <line x1={pad.left} y1={pad.top + innerHeight} x2={pad.left + innerWidth} y2={pad.top + innerHeight} class="axis" />
        <text x={pad.left - 6} y={pad.top + 8} class="axis-label" text-anchor="end">
          {formatBytes(maxBytes)}
        </text>
        <text x={pad.left + innerWidth + 6} y={pad.top + 8} class="axis-label wake">
          {formatDuration(maxWake)}
        </text>
        {turns.map((turn, index) => {
          const barHeight = ((turn.storedBytes ?? 0) / maxBytes) * innerHeight;
          return (
            <rect
              class="bar"
              x={x(index) - Math.min(18, step * 0.35)}
              width={Math.min(36, step * 0.7)}
              y={pad.top + innerHeight - barHeight}
              height={barHeight}
            >
              <title>{`turn ${turn.turn}: ${formatBytes(turn.storedBytes)} stored`}</title>
            </rect>
          );
        })}
        <polyline
          class="wake-line"
          fill="none"
          points={turns
            .map((turn, index) =>
              turn.wakeMilliseconds === undefined ? undefined : `${x(index)},${pad.top + innerHeight - (turn.wakeMilliseconds / maxWake) * innerHeight}`,
            )
            .filter(Boolean)
            .join(' ')}
        />
        {turns.map((turn, index) =>
          turn.wakeMilliseconds === undefined ? null : (
            <circle class="wake-dot" cx={x(index)} cy={pad.top + innerHeight - (turn.wakeMilliseconds / maxWake) * innerHeight} r={4}>
              <title>{`turn ${turn.turn}: woke in ${formatDuration(turn.wakeMilliseconds)}`}</title>
            </circle>
          ),
        )}
        {turns.map((turn, index) => (
          <text x={x(index)} y={height - 8} class="axis-label" text-anchor="middle">
            {turn.turn}
          </text>
        ))}
      </svg>
      <figcaption>
        <span class="legend bar-legend">stored bytes</span> <span class="legend wake-legend">wake time</span> per turn
      </figcaption>
      <details>
        <summary>Chart data</summary>
        <table>
          <TableHead columns={['Turn', 'Stored', 'Wake']} />
          <tbody>
            {turns.map((turn) => (
              <tr>
                <td>{turn.turn}</td>
                <td>{formatBytes(turn.storedBytes)}</td>
                <td>{formatDuration(turn.wakeMilliseconds)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </details>
    </figure>
  );
}
