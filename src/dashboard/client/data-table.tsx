import type { ComponentChildren } from 'preact';

/**
 * One column of a data table. Its label is said once and serves both the heading and each cell's
 * `data-label`, which the phone layout prints before the value (style.css), so the two cannot drift.
 */
export interface Column<Item> {
  label: string;
  /** Figures, right-aligned (the `number` class) in the heading and in every cell. */
  number?: boolean;
  /** The cell that names the row (`<th scope="row">`), for screen readers reading across. */
  rowHeader?: boolean;
  /** A further class on every cell of the column (the heading keeps only `number`). */
  class?: string;
  title?: (item: Item) => string | undefined;
  cell: (item: Item) => ComponentChildren;
}

/** A table's column headings; plain labels or columns. */
export function TableHead({ columns }: { columns: readonly (string | { label: string; number?: boolean })[] }) {
  return (
    <thead>
      <tr>
        {columns.map((column) => {
          const { label, number } = typeof column === 'string' ? { label: column, number: false } : column;
          return (
            <th key={label} scope="col" class={number ? 'number' : undefined}>
              {label}
            </th>
          );
        })}
      </tr>
    </thead>
  );
}

/**
 * A list of items as a table, one row an item: scrolls sideways inside `table-wrap` on a narrow
 * screen, and becomes labelled cards at phone width.
 */
export function DataTable<Item>(props: {
  class?: string;
  columns: readonly Column<Item>[];
  items: readonly Item[];
  rowKey: (item: Item) => string;
  /** Attributes of an item's `<tr>` (a class, data- attributes for tests and styles). */
  rowAttributes?: (item: Item) => Record<string, string>;
}) {
  return (
    <div class="table-wrap">
      <table class={props.class}>
        <TableHead columns={props.columns} />
        <tbody>
          {props.items.map((item) => (
            <tr key={props.rowKey(item)} {...props.rowAttributes?.(item)}>
              {props.columns.map((column) => {
                const Cell = column.rowHeader ? 'th' : 'td';
                return (
                  <Cell
                    key={column.label}
                    scope={column.rowHeader ? 'row' : undefined}
                    data-label={column.label}
                    class={[column.number ? 'number' : '', column.class ?? ''].filter(Boolean).join(' ') || undefined}
                    title={column.title?.(item)}
                  >
                    {column.cell(item)}
                  </Cell>
                );
              })}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
