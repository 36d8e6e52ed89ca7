import type { ComponentChildren } from 'preact';
import { useEffect, useRef } from 'preact/hooks';
import type { SessionState } from './shapes.ts';

export function StateBadge({ state }: { state: SessionState | string }) {
  return <span class={`badge state-${state}`}>{state}</span>;
}

/**
 * A modal dialog on the native <dialog> element: focus moves into it, Escape cancels, and focus
 * returns to the button that opened it. Used for every confirmation.
 */
export function Dialog(props: { open: boolean; title: string; onClose: () => void; children: ComponentChildren }) {
  const reference = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = reference.current;
    if (!dialog) return;
    if (props.open && !dialog.open) dialog.showModal();
    if (!props.open && dialog.open) dialog.close();
  }, [props.open]);
  return (
    <dialog ref={reference} aria-labelledby="dialog-title" onClose={props.onClose} onCancel={props.onClose}>
      {props.open && (
        <>
          <h2 id="dialog-title">{props.title}</h2>
          {props.children}
        </>
      )}
    </dialog>
  );
}

export function ErrorNote({ error }: { error?: { message: string; hint?: string } | undefined }) {
  if (!error) return null;
  return (
    <p class="error" role="alert">
      {error.message}
      {error.hint ? <span class="hint"> — {error.hint}</span> : null}
    </p>
  );
}
