/** README.md holds the generated environment table between these two lines. */
export const tableStart = '<!-- environment table: generated from src/config/environment.ts by scripts/environment-table.ts -->';
export const tableEnd = '<!-- end of environment table -->';

/** The README's current table (between the markers), or undefined when the markers are missing. */
export function readEnvironmentTable(readme: string): string | undefined {
  const start = readme.indexOf(tableStart);
  const end = readme.indexOf(tableEnd);
  if (start < 0 || end < start) return undefined;
  return readme.slice(start + tableStart.length, end).trim();
}

/** The README with its table replaced by `table`. */
export function replaceEnvironmentTable(readme: string, table: string): string {
  const start = readme.indexOf(tableStart);
  const end = readme.indexOf(tableEnd);
  if (start < 0 || end < start) throw new Error(`README.md lacks the markers ${tableStart} ... ${tableEnd}`);
  return `${readme.slice(0, start + tableStart.length)}\n${table}\n${readme.slice(end)}`;
}
