// Development-only stand-in for flamingo-server, implementing the parts of docs/api-contract.md the
// web demo uses. run.sh uses the real binary; this is only used with MOCK=1.
//
//   node tests/browser/mock-server.mjs --port 8090 [--host 127.0.0.1]
//
// Env: MOCK_TOKEN_DELAY_MS (default 60), MOCK_SLOTS (concurrent generations, default 1; more -> 429),
//      MOCK_READY_DELAY_MS (answer 503 on /ready and /generate* for this long after start, default 0),
//      MOCK_MAX_BODY_BYTES (default 8 MiB), MOCK_MAX_IMAGE_BYTES (default 4 MiB),
//      MOCK_MAX_IMAGE_PIXELS (default 16 Mpx).
// Magic seeds (parameters.seed) for exercising the page's error paths:
//   429 -> 429 with Retry-After: 7, 503 -> 503 with Retry-After: 3,
//   500 -> stream starts, then `event: error` after 3 tokens, 451 -> content filter acts (filtered: true).

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const ASSETS = path.resolve(here, '../../crates/flamingo-server/assets');

const args = process.argv.slice(2);
const arg = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const HOST = arg('host', '127.0.0.1');
const PORT = Number(arg('port', '8090'));
const TOKEN_DELAY = Number(process.env.MOCK_TOKEN_DELAY_MS ?? 60);
const SLOTS = Number(process.env.MOCK_SLOTS ?? 1);
const READY_AT = Date.now() + Number(process.env.MOCK_READY_DELAY_MS ?? 0);
const MAX_BODY = Number(process.env.MOCK_MAX_BODY_BYTES ?? 8 * 1024 * 1024);
const MAX_IMAGE_BYTES = Number(process.env.MOCK_MAX_IMAGE_BYTES ?? 4 * 1024 * 1024);
const MAX_IMAGE_PIXELS = Number(process.env.MOCK_MAX_IMAGE_PIXELS ?? 16 * 1024 * 1024);
const MODEL_ID = 'mock/tiny-openflamingo';

let active = 0;
let requestCounter = 0;
const stats = { started: 0, completed: 0, cancelled: 0 };

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.png': 'image/png', '.svg': 'image/svg+xml', '.json': 'application/json' };

function send(res, status, body, headers = {}) {
  const data = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(data);
}
const fail = (res, status, error_type, error, headers) => send(res, status, { error, error_type }, headers);

class HttpError extends Error {
  constructor(status, type, message, headers) { super(message); this.status = status; this.type = type; this.headers = headers; }
}

function readBody(req) {
  // Drain the whole body even when it is too large, so the client reads the 413 instead of a reset.
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size <= MAX_BODY) chunks.push(c);
    });
    req.on('end', () => (size > MAX_BODY
      ? reject(new HttpError(413, 'payload_too_large', `request body is ${size} bytes, limit ${MAX_BODY}`))
      : resolve(Buffer.concat(chunks))));
    req.on('error', reject);
  });
}

function checkImage(b64, idx) {
  if (typeof b64 !== 'string' || !b64) throw new HttpError(422, 'validation', `image ${idx}: missing`);
  const comma = b64.startsWith('data:') ? b64.indexOf(',') : -1;
  const raw = comma >= 0 ? b64.slice(comma + 1) : b64;
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(raw)) throw new HttpError(422, 'validation', `image ${idx}: invalid base64`);
  const buf = Buffer.from(raw, 'base64');
  if (buf.length > MAX_IMAGE_BYTES) throw new HttpError(413, 'payload_too_large', `image ${idx}: ${buf.length} bytes, limit ${MAX_IMAGE_BYTES}`);
  const png = buf.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  const jpeg = buf[0] === 0xff && buf[1] === 0xd8;
  const gif = buf.subarray(0, 3).toString('latin1') === 'GIF';
  const webp = buf.subarray(0, 4).toString('latin1') === 'RIFF' && buf.subarray(8, 12).toString('latin1') === 'WEBP';
  const bmp = buf.subarray(0, 2).toString('latin1') === 'BM';
  if (!(png || jpeg || gif || webp || bmp)) throw new HttpError(422, 'validation', `image ${idx}: not a supported image (png, jpeg, webp, gif, bmp)`);
  if (png && buf.length >= 24) {
    const w = buf.readUInt32BE(16), h = buf.readUInt32BE(20);
    if (w * h > MAX_IMAGE_PIXELS) throw new HttpError(413, 'payload_too_large', `image ${idx}: ${w}x${h} pixels, limit ${MAX_IMAGE_PIXELS}`);
  }
}

function render(req) {
  if (typeof req.inputs === 'string') {
    const images = req.images ?? [];
    const n = (req.inputs.match(/<image>/g) ?? []).length;
    if (n !== images.length) throw new HttpError(422, 'validation', `prompt has ${n} <image> markers but ${images.length} images`);
    images.forEach(checkImage);
    return req.inputs;
  }
  if (!req.query || typeof req.query !== 'object') throw new HttpError(422, 'validation', 'need `inputs` or `query`');
  const ex = req.examples ?? [];
  [...ex.map((e) => e.image), req.query.image].forEach(checkImage);
  if (req.task === 'caption') return ex.map((e) => `<image>Output:${e.text}<|endofchunk|>`).join('') + '<image>Output:';
  if (req.task === 'vqa') {
    if (!req.query.question) throw new HttpError(422, 'validation', 'vqa query needs a question');
    return ex.map((e) => `<image>Question:${e.question} Short Answer:${e.answer}<|endofchunk|>`).join('') + `<image>Question:${req.query.question} Short Answer:`;
  }
  if (req.task != null) throw new HttpError(422, 'validation', `unknown task ${req.task}`);
  return ex.map((e) => `<image>${e.text}<|endofchunk|>`).join('') + `<image>${req.query.text ?? ''}`;
}

const WORDS = ['a', 'small', 'red', 'house', 'with', 'a', 'cat', 'near', 'the', 'sea', 'under', 'an', 'orange', 'sky', 'and', 'blue', 'square', 'shapes'];
function tokensFor(prompt, n, seed) {
  let h = 2166136261 ^ (seed ?? 0);
  for (const ch of prompt) h = Math.imul(h ^ ch.charCodeAt(0), 16777619);
  const out = [];
  for (let i = 0; i < n; i++) {
    h = Math.imul(h ^ (i + 1), 16777619) >>> 0;
    const w = WORDS[h % WORDS.length];
    out.push({ id: 100 + (h % 300), text: i === 0 ? w[0].toUpperCase() + w.slice(1) : ` ${w}`, logprob: -((h % 1000) / 500), special: false });
  }
  return out;
}

function validateParams(p, stream) {
  const max = p.max_new_tokens ?? 20;
  if (!Number.isInteger(max) || max < 1 || max > 1024) throw new HttpError(422, 'validation', 'max_new_tokens must be in 1..=1024');
  if ((p.num_beams ?? 1) > 1 && stream) throw new HttpError(422, 'validation', 'beam search is not supported on the stream route');
  if (p.top_p != null && !(p.top_p > 0 && p.top_p <= 1)) throw new HttpError(422, 'validation', 'top_p must be in (0, 1]');
  if (p.temperature != null && !(p.temperature > 0)) throw new HttpError(422, 'validation', 'temperature must be > 0');
  return max;
}

async function generate(req, res, stream) {
  if (Date.now() < READY_AT) throw new HttpError(503, 'unavailable', 'model is loading', { 'retry-after': '3' });
  if ((req.headers['content-type'] ?? '').split(';')[0].trim() !== 'application/json') throw new HttpError(400, 'invalid_request', 'expected application/json');
  const body = await readBody(req);
  let json;
  try { json = JSON.parse(body.toString('utf8')); } catch { throw new HttpError(400, 'invalid_request', 'malformed JSON'); }
  const params = json.parameters ?? {};
  const seed = params.seed;
  if (seed === 429) throw new HttpError(429, 'overloaded', 'queue full', { 'retry-after': '7' });
  if (seed === 503) throw new HttpError(503, 'unavailable', 'worker restarting', { 'retry-after': '3' });
  const max = validateParams(params, stream);
  const prompt = render(json);
  if (active >= SLOTS) throw new HttpError(429, 'overloaded', 'all generation slots busy', { 'retry-after': '2' });

  const filterAt = seed === 451 ? Math.min(3, max) : -1;
  const tokens = tokensFor(prompt, filterAt > 0 ? filterAt : max, seed);
  const finish = filterAt > 0 ? 'content_filter' : 'length';
  const text = tokens.map((t) => t.text).join('') + (filterAt > 0 ? ' ***' : '');
  console.log(`[mock] ${stream ? 'stream' : 'generate'} ${JSON.stringify(prompt.replace(/\n/g, ' '))} max=${max} beams=${params.num_beams ?? 1}`);

  if (!stream) {
    active++;
    try {
      await new Promise((r) => setTimeout(r, TOKEN_DELAY * 3));
      const out = { generated_text: text, filtered: filterAt > 0 };
      if (params.details) out.details = { finish_reason: finish, generated_tokens: tokens.length, seed: seed ?? 42, tokens };
      send(res, 200, out);
    } finally { active--; }
    return;
  }

  active++;
  stats.started++;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  let i = 0;
  let closed = false;
  const release = (why) => {
    if (closed) return;
    closed = true;
    clearInterval(timer);
    active--;
    stats[why]++;
    console.log(`[mock] stream ${why} after ${i} tokens (active=${active})`);
  };
  res.on('close', () => release(i >= tokens.length ? 'completed' : 'cancelled'));
  const timer = setInterval(() => {
    if (closed) return;
    if (seed === 500 && i === 3) {
      res.write(`event: error\ndata: ${JSON.stringify({ error: 'worker crashed (mock)', error_type: 'internal' })}\n\n`);
      i = tokens.length;
      res.end();
      return;
    }
    const tok = tokens[i++];
    const last = i === tokens.length;
    const ev = { index: i, token: tok, generated_text: null, details: null };
    if (last) {
      if (filterAt > 0) tok.text += ' ***';
      ev.generated_text = text;
      ev.details = { finish_reason: finish, generated_tokens: tokens.length, seed: seed ?? 42 };
      ev.filtered = filterAt > 0;
    }
    res.write(`data: ${JSON.stringify(ev)}\n\n`);
    if (last) res.end();
  }, TOKEN_DELAY);
}

function serveAsset(res, rel) {
  const file = path.resolve(ASSETS, rel);
  if (!file.startsWith(ASSETS + path.sep)) return fail(res, 404, 'not_found', 'not found');
  fs.readFile(file, (err, data) => {
    if (err) return fail(res, 404, 'not_found', 'not found');
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-cache' });
    res.end(data);
  });
}

const server = http.createServer(async (req, res) => {
  res.setHeader('x-request-id', req.headers['x-request-id'] ?? `mock-${++requestCounter}`);
  res.setHeader('access-control-allow-origin', '*');
  res.setHeader('access-control-expose-headers', 'retry-after, x-request-id');
  const url = new URL(req.url, 'http://x');
  try {
    if (req.method === 'OPTIONS') {
      res.writeHead(204, { 'access-control-allow-methods': 'GET, POST', 'access-control-allow-headers': 'content-type, authorization' });
      return res.end();
    }
    if (req.method === 'GET') {
      if (url.pathname === '/') return serveAsset(res, 'index.html');
      if (url.pathname.startsWith('/assets/')) return serveAsset(res, decodeURIComponent(url.pathname.slice('/assets/'.length)));
      if (url.pathname === '/health') return send(res, 200, { status: 'ok' });
      if (url.pathname === '/ready') {
        return Date.now() < READY_AT ? fail(res, 503, 'unavailable', 'loading', { 'retry-after': '3' }) : send(res, 200, { status: 'ready' });
      }
      if (url.pathname === '/info') {
        return send(res, 200, { model_id: MODEL_ID, dtype: 'f32', device: 'cpu', version: '0.0.0-mock', limits: { max_body_bytes: MAX_BODY, max_image_bytes: MAX_IMAGE_BYTES, max_image_pixels: MAX_IMAGE_PIXELS } });
      }
      if (url.pathname === '/v1/models') return send(res, 200, { object: 'list', data: [{ id: MODEL_ID, object: 'model', created: 0, owned_by: 'flamingo-serve' }] });
      if (url.pathname === '/mock/stats') return send(res, 200, { active, ...stats, token_delay_ms: TOKEN_DELAY });
    }
    if (req.method === 'POST' && (url.pathname === '/generate' || url.pathname === '/generate_stream')) {
      return await generate(req, res, url.pathname === '/generate_stream');
    }
    fail(res, 404, 'not_found', `no route ${req.method} ${url.pathname}`);
  } catch (e) {
    if (e instanceof HttpError) {
      if (!res.headersSent) fail(res, e.status, e.type, e.message, { ...(e.headers ?? {}), ...(e.status === 413 ? { connection: 'close' } : {}) });
      return;
    }
    console.error(e);
    if (!res.headersSent) fail(res, 500, 'internal', String(e));
  }
});

server.listen(PORT, HOST, () => console.log(`[mock] listening on http://${HOST}:${PORT}`));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
