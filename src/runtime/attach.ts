import { FrameType, decodeExit, decodeError } from '../guest/protocol.ts';
import type { AgentClient, ExecHandlers } from '../guest/agent-client.ts';
import { sendControl } from './supervisor-client.ts';

export interface AttachedProcess {
  write(data: Buffer): void;
  endInput(): void;
  resize(rows: number, columns: number): void;
  signal(signalNumber: number): void;
  /** The main process's exit code (or the machine's, when QEMU died). */
  exited: Promise<number>;
}

/** Follows a machine's main process: its output live, and input to it. */
export async function attachToMainProcess(client: AgentClient, handlers: ExecHandlers): Promise<AttachedProcess> {
  const stream = client.allocateStream();
  let resolveExit!: (code: number) => void;
  const exited = new Promise<number>((resolve) => (resolveExit = resolve));
  await sendControl(client, { op: 'attach' }, stream);
  client.route(stream, (frame) => {
    if (frame.type === FrameType.stdout) handlers.stdout?.(frame.payload);
    else if (frame.type === FrameType.stderr) handlers.stderr?.(frame.payload);
    else if (frame.type === FrameType.exit) {
      resolveExit(decodeExit(frame.payload).code);
      return true;
    } else if (frame.type === FrameType.error) {
      handlers.stderr?.(Buffer.from(`torpor: ${decodeError(frame.payload).message}\n`));
    }
    return false;
  });
  client.onClose(() => resolveExit(-1));
  const send = (type: number, payload: Buffer) => {
    if (!client.closed) client.send(type, stream, payload);
  };
  return {
    write: (data) => send(FrameType.stdin, data),
    endInput: () => send(FrameType.stdin, Buffer.alloc(0)),
    resize: (rows, columns) => {
      const payload = Buffer.alloc(4);
      payload.writeUInt16LE(rows, 0);
      payload.writeUInt16LE(columns, 2);
      send(FrameType.resize, payload);
    },
    signal: (signalNumber) => {
      const payload = Buffer.alloc(4);
      payload.writeInt32LE(signalNumber, 0);
      send(FrameType.signal, payload);
    },
    exited,
  };
}
