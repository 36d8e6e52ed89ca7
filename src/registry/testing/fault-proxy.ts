import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';

/** What the proxy does with one request; `pass` forwards it untouched. */
export type Fault = { kind: 'pass' } | { kind: 'status'; status: number } | { kind: 'cut'; afterBytes: number } | { kind: 'tamper' };

export interface FaultProxy {
  address: string;
  /** Every request seen: method, path and Range header. */
  requests: Array<{ method: string; path: string; range?: string; authorization?: string }>;
  stop(): Promise<void>;
}

/**
 * A loopback HTTP proxy in front of a registry that injects failures: errors, connections cut
 * mid-body, flipped bytes. With `bearer`, it also plays a token server, answering 401 with a
 * Bearer challenge until a request carries the token it hands out at /token (to anyone, or only
 * to requests with the given basic credentials, like Docker Hub's token service).
 */
export async function startFaultProxy(
  upstream: string,
  decide: (request: IncomingMessage, count: number) => Fault,
  options: { bearer?: boolean; tokenCredentials?: { user: string; password: string } } = {},
): Promise<FaultProxy> {
  const requests: FaultProxy['requests'] = [];
  let address = '';
  const server = createServer((incoming: IncomingMessage, outgoing: ServerResponse) => {
    requests.push({ method: incoming.method!, path: incoming.url!, range: incoming.headers.range, authorization: incoming.headers.authorization });
    if (options.bearer) {
      if (incoming.url!.startsWith('/token')) {
        const wanted =
          options.tokenCredentials && `Basic ${Buffer.from(`${options.tokenCredentials.user}:${options.tokenCredentials.password}`).toString('base64')}`;
        if (wanted && incoming.headers.authorization !== wanted) {
          outgoing.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ details: 'incorrect username or password' }));
          return;
        }
        outgoing.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: 'granted-token' }));
        return;
      }
      if (incoming.headers.authorization !== 'Bearer granted-token') {
        outgoing
          .writeHead(401, {
            'www-authenticate': `Bearer realm="http://${address}/token",service="test-registry",scope="repository:any:pull"`,
            'content-type': 'application/json',
          })
          .end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'token required' }] }));
        return;
      }
    }
    const fault = decide(incoming, requests.length);
    if (fault.kind === 'status') {
      outgoing
        .writeHead(fault.status, { 'content-type': 'application/json' })
        .end(JSON.stringify({ errors: [{ code: 'UNKNOWN', message: 'injected failure' }] }));
      return;
    }
    const headers = { ...incoming.headers, host: upstream };
    delete headers.authorization;
    const forward = request(`http://${upstream}${incoming.url}`, { method: incoming.method, headers }, (response) => {
      if (fault.kind === 'pass') {
        outgoing.writeHead(response.statusCode!, response.headers);
        response.pipe(outgoing);
        return;
      }
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const body = Buffer.concat(chunks);
        outgoing.writeHead(response.statusCode!, { ...response.headers, 'content-length': String(body.length) });
        if (fault.kind === 'tamper') {
          if (body.length > 0) body[body.length >> 1] ^= 0xff;
          outgoing.end(body);
        } else {
          outgoing.write(body.subarray(0, fault.afterBytes), () => outgoing.socket?.destroy());
        }
      });
    });
    forward.on('error', () => outgoing.socket?.destroy());
    incoming.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  address = `127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    address,
    requests,
    stop: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
