/**
 * Log entries are finer than provider messages: one assistant message may hold reasoning, text and
 * tool calls, and several tool results travel in one message. Consecutive entries for the same
 * side are grouped back into one message; a `messageId` keeps messages apart that the provider sent
 * apart, so conversions round-trip exactly.
 */
export interface Group<Item> {
  side: string;
  items: Item[];
}

/** Returned as a message id to keep an item in a message of its own. */
export const neverMerge: unique symbol = Symbol('never merge');

export function groupBySide<Item>(
  items: readonly Item[],
  sideOf: (item: Item) => string | undefined,
  messageIdOf: (item: Item) => string | undefined | typeof neverMerge,
): Group<Item>[] {
  const groups: Group<Item>[] = [];
  let lastMessageId: string | undefined | typeof neverMerge;
  for (const item of items) {
    const side = sideOf(item);
    if (side === undefined) continue;
    const messageId = messageIdOf(item);
    const previous = groups[groups.length - 1];
    if (previous && previous.side === side && messageId !== neverMerge && lastMessageId !== neverMerge && messageId === lastMessageId) {
      previous.items.push(item);
    } else {
      groups.push({ side, items: [item] });
    }
    lastMessageId = messageId;
  }
  return groups;
}
