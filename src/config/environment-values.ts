/**
 * The kinds of value an environment variable holds, each a small parser. Not zod: every command
 * reads the environment, and loading zod alone costs more CPU than `torpor ps` may spend in all
 * (~60-130 ms), so the fast commands must not need it.
 */
export interface EnvironmentValue<T> {
  /** The value of a set (non-empty) variable or of an unset one (`undefined`); throws an Error saying what is expected. */
  read(raw: string | undefined): T;
}

const value = <T>(read: (raw: string | undefined) => T): EnvironmentValue<T> => ({ read });

/** Any non-empty text, or undefined when unset. */
export const optionalText = (): EnvironmentValue<string | undefined> => value((raw) => raw);

/** Any non-empty text, or `fallback` when unset. */
export const textOr = (fallback: string): EnvironmentValue<string> => value((raw) => raw ?? fallback);

/** An absolute URL, or undefined when unset. */
export const optionalUrl = (): EnvironmentValue<string | undefined> =>
  value((raw) => {
    if (raw === undefined) return undefined;
    try {
      new URL(raw);
    } catch {
      throw new Error('an absolute URL, like http://127.0.0.1:8080');
    }
    return raw;
  });

/** One word of a fixed list, or `fallback` when unset. */
export const choice = <const Choices extends readonly string[]>(choices: Choices, fallback: Choices[number]): EnvironmentValue<Choices[number]> =>
  value((raw) => {
    if (raw === undefined) return fallback;
    if (!choices.includes(raw)) throw new Error(`one of ${choices.join(', ')}`);
    return raw;
  });

/** A switch: `onValue` turns it on, the other digit off; unset gives `fallback`. */
export const flag = (onValue: '0' | '1', fallback: boolean): EnvironmentValue<boolean> =>
  value((raw) => {
    if (raw === undefined) return fallback;
    if (raw !== '0' && raw !== '1') throw new Error('0 or 1');
    return raw === onValue;
  });

function readWholeNumber(raw: string, minimum: number): number {
  if (!/^\d+$/.test(raw)) throw new Error('a whole number (decimal digits)');
  const number = Number(raw);
  if (!Number.isSafeInteger(number)) throw new Error('a whole number small enough to be exact');
  if (number < minimum) throw new Error(`a whole number of at least ${minimum}`);
  return number;
}

/** A count or a number of milliseconds in decimal digits, at least `minimum`; `fallback` when unset. */
export const wholeNumberOr = (minimum: number, fallback: number): EnvironmentValue<number> =>
  value((raw) => (raw === undefined ? fallback : readWholeNumber(raw, minimum)));

/** A count in decimal digits, at least `minimum`; undefined when unset. */
export const optionalWholeNumber = (minimum: number): EnvironmentValue<number | undefined> =>
  value((raw) => (raw === undefined ? undefined : readWholeNumber(raw, minimum)));

/** A whole number (at least `minimum`) or the word `auto`, which its reader works out from the host; undefined when unset. */
export const optionalWholeNumberOrAuto = (minimum: number): EnvironmentValue<number | 'auto' | undefined> =>
  value((raw) => {
    if (raw === undefined) return undefined;
    if (raw === 'auto') return 'auto';
    try {
      return readWholeNumber(raw, minimum);
    } catch (error) {
      throw new Error(`${(error as Error).message}, or auto`);
    }
  });
