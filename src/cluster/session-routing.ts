import { TorporError } from '../util/errors.ts';
import type { ClusterNode } from './cluster-node.ts';
import { nodeWithMostRoom } from './node-registry.ts';

/** Set on a request one node forwards to another, so a request is forwarded at most once. */
export const routedByHeader = 'x-torpor-routed-by';

type Fetch = (request: Request, ...rest: never[]) => Response | Promise<Response>;

/** Headers that describe one connection (or that the first node already checked), not the request. */
const notForwarded = ['host', 'connection', 'keep-alive', 'transfer-encoding', 'content-length', 'upgrade', 'origin', 'sec-fetch-site', 'authorization'];

function answer(error: TorporError): Response {
  return new Response(JSON.stringify(error.toJSON()), { status: error.status, headers: { 'content-type': 'application/json' } });
}

/**
 * Sends the request on to another node, body and answer streamed both ways (a turn's SSE stream
 * passes through as it is written). The client's token was checked here; the holder gets the
 * cluster token instead.
 */
async function forward(request: Request, node: ClusterNode, target: { name: string; url: string }): Promise<Response> {
  const url = new URL(request.url);
  const headers = new Headers(request.headers);
  for (const name of notForwarded) headers.delete(name);
  headers.set('authorization', `Bearer ${node.token}`);
  headers.set(routedByHeader, node.name);
  let upstream: Response;
  try {
    upstream = await fetch(`${target.url}${url.pathname}${url.search}`, {
      method: request.method,
      headers,
      body: request.body,
      redirect: 'manual',
      signal: request.signal,
      ...(request.body ? { duplex: 'half' } : {}),
    } as RequestInit);
  } catch (error) {
    return answer(
      new TorporError('node-unreachable', `node ${target.name} (${target.url}), which runs this session, did not answer: ${(error as Error).message}`, {
        hint: 'if the node died, another node takes its sessions over within the lease time: send the request again',
        status: 502,
      }),
    );
  }
  const answerHeaders = new Headers(upstream.headers);
  // fetch already decoded the body; the length and encoding of the original no longer apply.
  for (const name of ['content-encoding', 'content-length', 'transfer-encoding', 'connection', 'keep-alive']) answerHeaders.delete(name);
  return new Response(upstream.body, { status: upstream.status, statusText: upstream.statusText, headers: answerHeaders });
}

/**
 * Any node answers for any session: a request about a session another node holds is forwarded to
 * that node, a session whose node died is taken over on the spot, and a new session is created on
 * the live node with the most room. Runs behind the request guards (the client is authenticated).
 * Also serves `GET /v1/cluster/nodes`, `GET /v1/cluster/node` (this node: snapshot transfers, takeovers)
 * and `POST /v1/sessions/:id/move {"node": NAME}`.
 */
export function routeSessionRequests<F extends Fetch>(fetchLocal: F, node: ClusterNode): F {
  const routed = async (request: Request, ...rest: never[]): Promise<Response> => {
    const url = new URL(request.url);
    const path = url.pathname.replace(/\/+$/, '');
    try {
      if (path === '/v1/cluster/nodes' && request.method === 'GET') return Response.json({ nodes: await node.nodes() });
      if (path === '/v1/cluster/node' && request.method === 'GET') {
        return Response.json({ name: node.name, snapshots: node.replication?.counters ?? null, takeovers: node.takeovers });
      }
      if (path === '/v1/sessions' && request.method === 'POST' && !request.headers.has(routedByHeader)) {
        const target = nodeWithMostRoom(await node.nodes(), node.name);
        if (target && target.name !== node.name) return await forward(request, node, target);
        return await fetchLocal(request, ...rest);
      }
      const match = /^\/v1\/sessions\/([^/]+)(\/.*)?$/.exec(path);
      if (!match) return await fetchLocal(request, ...rest);
      const id = decodeURIComponent(match[1]!);
      if (match[2] === '/move' && request.method === 'POST') return await move(request, node, id);
      const leased = await node.store.refresh(id);
      if (!leased || leased.leaseNode === node.name) return await fetchLocal(request, ...rest);
      const nodes = await node.nodes();
      const holder = nodes.find((each) => each.name === leased.leaseNode);
      if (!holder?.alive) {
        // Its node died: take it over now rather than wait for the next failover pass.
        if (await node.takeOver(leased.record.id, leased.epoch, leased.leaseNode)) return await fetchLocal(request, ...rest);
        return answer(new TorporError('session-moving', `session ${id} is being taken over by another node`, { hint: 'send the request again', status: 503 }));
      }
      if (request.headers.has(routedByHeader)) {
        return answer(
          new TorporError('session-elsewhere', `session ${id} moved to node ${holder.name} while this request was forwarded`, {
            hint: 'send the request again',
            status: 409,
          }),
        );
      }
      return await forward(request, node, holder);
    } catch (error) {
      if (error instanceof TorporError) return answer(error);
      throw error;
    }
  };
  return routed as F;
}

async function move(request: Request, node: ClusterNode, id: string): Promise<Response> {
  const body = (await request.json().catch(() => undefined)) as { node?: unknown } | undefined;
  if (typeof body?.node !== 'string') throw new TorporError('invalid-request', 'send {"node": "NAME"}: the node the session wakes on next', { status: 400 });
  const leased = await node.store.refresh(id);
  if (!leased || leased.record.state === 'deleted') throw new TorporError('session-unknown', `no such session: ${id}`, { status: 404 });
  if (!(await node.move(leased.record.id, body.node))) {
    throw new TorporError('move-refused', `session ${id} is ${leased.record.state} or node ${body.node} is not alive`, {
      hint: 'only a hibernated session moves, and only to a live node (`torpor nodes ls`)',
      status: 409,
    });
  }
  return Response.json({ session: leased.record.id, node: body.node });
}
