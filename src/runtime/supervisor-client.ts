import { TorporError } from '../util/errors.ts';
import { AgentClient } from '../guest/agent-client.ts';
import { FrameType, decodeError } from '../guest/protocol.ts';
import { machineFiles } from './machine-files.ts';
import type { MachineConfig } from './machine-record.ts';
import { effectiveState } from './machine-status.ts';
import type { ControlRequest, ControlReply } from './control-protocol.ts';

/** Opens a client on a machine's supervisor control socket, without checking the machine's state. */
export function connectToSupervisor(id: string): Promise<AgentClient> {
  return AgentClient.connect(machineFiles(id).controlSocket, { timeoutMs: 2000 });
}

/** A client of a running machine's supervisor (which shares the guest channel with other clients). */
export async function connectToMachine(config: MachineConfig): Promise<AgentClient> {
  const state = await effectiveState(config);
  if (state.status !== 'running') {
    throw new TorporError('not-running', `machine ${config.name} is not running (${state.status}${state.error ? `: ${state.error}` : ''})`, {
      hint: `torpor start ${config.name}`,
    });
  }
  try {
    return await connectToSupervisor(config.id);
  } catch (error) {
    throw new TorporError('not-running', `cannot reach machine ${config.name}'s supervisor: ${(error as Error).message}`, {
      hint: `torpor rm -f ${config.name}`,
    });
  }
}

/** Sends one control request (stop, snapshot, attach...) to a supervisor and waits for its reply. */
export function sendControl(client: AgentClient, request: ControlRequest, stream?: number): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const id = stream ?? client.allocateStream();
    client.route(id, (frame) => {
      if (frame.type === FrameType.controlReply) resolve(JSON.parse(frame.payload.toString()) as ControlReply);
      else if (frame.type === FrameType.error) reject(new Error(decodeError(frame.payload).message));
      else return false;
      return true;
    });
    client.send(FrameType.control, id, Buffer.from(JSON.stringify(request)));
  });
}
