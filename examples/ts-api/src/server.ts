// A small JSON API for Skyclaw: GET /health for the host's probes, GET /hello
// and POST /echo for clients. The host sets PORT and HOST; SIGTERM (sent when
// the instance is drained) closes the server once in-flight requests finish.
import { createServer, IncomingMessage, ServerResponse } from "node:http";

const port = Number(process.env.PORT ?? 8080);
const host = process.env.HOST ?? "127.0.0.1";
const greeting = process.env.GREETING ?? "hello";
/** Largest request body accepted, so a client cannot exhaust memory. */
const MAX_BODY_BYTES = 64 * 1024;

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error("body too large"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  if (req.method === "GET" && url.pathname === "/health") {
    json(res, 200, { status: "ok" });
  } else if (req.method === "GET" && url.pathname === "/hello") {
    const name = url.searchParams.get("name") ?? "world";
    json(res, 200, { message: `${greeting}, ${name}`, pid: process.pid });
  } else if (req.method === "POST" && url.pathname === "/echo") {
    try {
      const body = await readBody(req);
      json(res, 200, { echo: JSON.parse(body) });
    } catch (e) {
      json(res, 400, { error: String(e) });
    }
  } else {
    json(res, 404, { error: `no route ${req.method} ${url.pathname}` });
  }
});

server.listen(port, host, () => {
  console.log(`ts-api listening on ${host}:${port}`);
});

process.on("SIGTERM", () => {
  console.log("ts-api draining");
  server.close(() => process.exit(0));
});
