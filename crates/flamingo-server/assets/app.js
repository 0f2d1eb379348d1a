// flamingo-serve web demo. Plain ES module, no dependencies, no build step.
// Talks only to the public API described in docs/api-contract.md.

// ---------------------------------------------------------------------------
// API target: same origin (relative URLs) unless ?api=http://host:port is given.

const API_BASE = (() => {
  const raw = new URLSearchParams(window.location.search).get('api');
  if (!raw) return null;
  try {
    const u = new URL(raw);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http(s)');
    return u.href.endsWith('/') ? u.href : `${u.href}/`;
  } catch {
    console.warn(`Ignoring invalid ?api= value: ${raw}`);
    return null;
  }
})();

function apiUrl(path) {
  // Relative to the page (works behind a path prefix) or to ?api=.
  return new URL(path, API_BASE ?? document.baseURI).href;
}

const SAMPLES = [
  { file: 'shapes.png', name: 'Shapes', alt: 'A red circle, a blue square and a yellow triangle', caption: 'A red circle, a blue square and a yellow triangle.' },
  { file: 'sunset.png', name: 'Sunset', alt: 'The sun setting over the sea', caption: 'The sun setting over a calm sea.' },
  { file: 'house.png', name: 'House', alt: 'A small house with a red roof', caption: 'A small house with a red roof on green grass.' },
  { file: 'cat.png', name: 'Cat', alt: 'A cartoon cat face', caption: 'A cartoon face of an orange cat.' },
];
const sampleUrl = (s) => new URL(`assets/samples/${s.file}`, document.baseURI).href;

const $ = (sel, root = document) => root.querySelector(sel);

const els = {
  form: $('#form'),
  modeHelp: $('#mode-help'),
  fewshotSection: $('#fewshot-section'),
  fewshotTask: $('#fewshot-task'),
  examples: $('#examples'),
  addExample: $('#add-example'),
  fillExamples: $('#fill-examples'),
  queryTitle: $('#query-title'),
  querySlotHost: $('#query-slot-host'),
  questionField: $('#question-field'),
  question: $('#question'),
  promptField: $('#prompt-field'),
  queryText: $('#query-text'),
  maxNewTokens: $('#max-new-tokens'),
  numBeams: $('#num-beams'),
  doSample: $('#do-sample'),
  temperature: $('#temperature'),
  topP: $('#top-p'),
  seed: $('#seed'),
  promptPreview: $('#prompt-preview'),
  generate: $('#generate'),
  stop: $('#stop'),
  outputPanel: $('#output-panel'),
  output: $('#output-text'),
  error: $('#error'),
  filterBadge: $('#filter-badge'),
  runStatus: $('#run-status'),
  ready: $('#ready'),
  readyText: $('#ready-text'),
  modelId: $('#model-id'),
  apiTarget: $('#api-target'),
};

const MODE_HELP = {
  caption: 'Describe an image. Sends the prompt <image>Output: to the model.',
  vqa: 'Ask a question about an image. Sends <image>Question:… Short Answer: to the model.',
  fewshot: 'Show the model a few image + text examples, then a query image it should continue in the same style.',
};

const limits = { maxImageBytes: null, maxImagePixels: null };

// ---------------------------------------------------------------------------
// Helpers

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MB`;
}

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => {
      const s = String(r.result);
      resolve(s.slice(s.indexOf(',') + 1)); // strip "data:<type>;base64,"
    };
    r.onerror = () => reject(r.error ?? new Error('could not read the file'));
    r.readAsDataURL(blob);
  });
}

function parseRetryAfter(value) {
  if (!value) return null;
  const secs = Number(value);
  if (Number.isFinite(secs)) return Math.max(0, Math.ceil(secs));
  const date = Date.parse(value);
  if (Number.isFinite(date)) return Math.max(0, Math.ceil((date - Date.now()) / 1000));
  return null;
}

// ---------------------------------------------------------------------------
// Image slots (query image and one per few-shot example)

const slots = new Set();
let lastActiveSlot = null;
let slotCounter = 0;

function createImageSlot(host, label) {
  const frag = $('#slot-template').content.cloneNode(true);
  const root = $('.slot', frag);
  const drop = $('.drop', root);
  const preview = $('.preview', root);
  const hint = $('.drop-hint', root);
  const fileInput = $('.file-input', root);
  const clearBtn = $('.clear-image', root);
  const info = $('.slot-info', root);
  const samplesBox = $('.samples', root);
  const id = `slot-${++slotCounter}`;
  fileInput.id = `${id}-file`;
  info.id = `${id}-info`;
  drop.setAttribute('aria-describedby', info.id);

  const slot = {
    root,
    image: null, // { base64, name, size, type, objectUrl }
    label,
    loadToken: 0,
    setLabel(text) {
      slot.label = text;
      drop.setAttribute('aria-label', `${text}. Drop an image here, paste one (Ctrl+V) or choose a file.`);
      fileInput.setAttribute('aria-label', `Choose file for ${text.toLowerCase()}`);
      for (const b of samplesBox.querySelectorAll('button')) {
        b.setAttribute('aria-label', `Use sample image “${b.dataset.name}” for ${text.toLowerCase()}`);
      }
    },
    async setBlob(blob, name) {
      const token = ++slot.loadToken;
      info.textContent = `Reading ${name}…`;
      let base64;
      try {
        base64 = await blobToBase64(blob);
      } catch (e) {
        info.textContent = `Could not read ${name}: ${e.message}`;
        return;
      }
      if (token !== slot.loadToken) return; // a newer image replaced this one
      slot.clearImage(false);
      const objectUrl = URL.createObjectURL(blob);
      slot.image = { base64, name, size: blob.size, type: blob.type, objectUrl };
      root.classList.add('has-image');
      preview.hidden = false;
      preview.alt = `Selected image: ${name}`;
      hint.hidden = true;
      clearBtn.hidden = false;
      let text = `${name} · ${formatBytes(blob.size)}`;
      if (blob.type && !blob.type.startsWith('image/')) text += ' · this does not look like an image file';
      if (limits.maxImageBytes && blob.size > limits.maxImageBytes) {
        text += ` · larger than the server limit of ${formatBytes(limits.maxImageBytes)}`;
      }
      info.textContent = text;
      preview.onload = () => {
        if (slot.image?.objectUrl !== objectUrl) return;
        const w = preview.naturalWidth, h = preview.naturalHeight;
        let extra = ` · ${w}×${h}`;
        if (limits.maxImagePixels && w * h > limits.maxImagePixels) extra += ' · more pixels than the server allows';
        info.textContent = text + extra;
      };
      preview.onerror = () => {
        if (slot.image?.objectUrl !== objectUrl) return;
        preview.hidden = true;
        hint.hidden = false;
        hint.textContent = 'No preview available for this file (the server decides whether it can use it).';
      };
      preview.src = objectUrl;
      updatePreview();
    },
    clearImage(announce = true) {
      if (slot.image) URL.revokeObjectURL(slot.image.objectUrl);
      slot.image = null;
      root.classList.remove('has-image');
      preview.removeAttribute('src');
      preview.hidden = true;
      hint.hidden = false;
      hint.textContent = 'Drop an image here, paste one (Ctrl+V) or choose a file.';
      clearBtn.hidden = true;
      if (announce) {
        info.textContent = 'No image.';
        updatePreview();
      }
    },
    destroy() {
      slot.clearImage(false);
      slots.delete(slot);
      if (lastActiveSlot === slot) lastActiveSlot = null;
    },
  };

  for (const s of SAMPLES) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'sample';
    b.dataset.name = s.name;
    b.dataset.sample = s.file;
    b.title = s.name;
    const img = document.createElement('img');
    img.src = sampleUrl(s);
    img.alt = '';
    img.width = 40;
    img.height = 40;
    b.append(img);
    b.addEventListener('click', () => loadSample(slot, s));
    samplesBox.append(b);
  }

  fileInput.addEventListener('change', () => {
    const f = fileInput.files?.[0];
    if (f) slot.setBlob(f, f.name);
    fileInput.value = ''; // allow choosing the same file again
  });
  clearBtn.addEventListener('click', () => {
    slot.clearImage();
    drop.focus();
  });
  drop.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      fileInput.click();
    }
  });
  drop.addEventListener('dragenter', (e) => { e.preventDefault(); drop.classList.add('dragging'); });
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy';
    drop.classList.add('dragging');
  });
  drop.addEventListener('dragleave', (e) => {
    if (!drop.contains(e.relatedTarget)) drop.classList.remove('dragging');
  });
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    e.stopPropagation();
    drop.classList.remove('dragging');
    const f = e.dataTransfer?.files?.[0];
    if (f) slot.setBlob(f, f.name);
    else slot.root.querySelector('.slot-info').textContent = 'Nothing to use in what was dropped; drop an image file.';
  });
  root.addEventListener('focusin', () => { lastActiveSlot = slot; });
  root.addEventListener('pointerdown', () => { lastActiveSlot = slot; });

  host.append(root);
  slot.setLabel(label);
  slots.add(slot);
  return slot;
}

async function loadSample(slot, sample) {
  try {
    const res = await fetch(sampleUrl(sample));
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    await slot.setBlob(await res.blob(), sample.file);
  } catch (e) {
    slot.root.querySelector('.slot-info').textContent = `Could not load the sample: ${e.message}`;
  }
}

// Paste an image from the clipboard into the focused (or last used) slot.
document.addEventListener('paste', (e) => {
  const items = e.clipboardData ? [...e.clipboardData.items] : [];
  const item = items.find((i) => i.kind === 'file' && i.type.startsWith('image/'));
  if (!item) return; // plain text paste: leave it alone
  const editing = document.activeElement?.matches?.('input[type="text"], input:not([type]), textarea');
  if (editing && items.some((i) => i.kind === 'string' && i.type === 'text/plain')) return;
  const file = item.getAsFile();
  if (!file) return;
  e.preventDefault();
  const focused = [...slots].find((s) => s.root.contains(document.activeElement));
  const target = focused ?? (lastActiveSlot && slots.has(lastActiveSlot) ? lastActiveSlot : querySlot);
  target.setBlob(file, file.name && file.name !== 'image.png' ? file.name : 'pasted image');
});

// Dropping a file outside a drop zone must not navigate away from the page.
window.addEventListener('dragover', (e) => e.preventDefault());
window.addEventListener('drop', (e) => e.preventDefault());

const querySlot = createImageSlot(els.querySlotHost, 'Image');

// ---------------------------------------------------------------------------
// Few-shot examples

const examples = [];

function addExample({ focus = false } = {}) {
  const frag = $('#example-template').content.cloneNode(true);
  const li = $('.example', frag);
  const slotHost = $('.example-slot-host', li);
  const textInput = $('.example-text', li);
  const textLabel = $('.example-text-label', li);
  const removeBtn = $('.remove-example', li);
  const idx = ++slotCounter;
  textInput.id = `example-text-${idx}`;
  textLabel.htmlFor = textInput.id;
  const ex = { li, textInput, textLabel, removeBtn, legend: $('.example-title', li), slot: null };
  ex.slot = createImageSlot(slotHost, 'Example image');
  removeBtn.addEventListener('click', () => removeExample(ex));
  textInput.addEventListener('input', updatePreview);
  examples.push(ex);
  els.examples.append(li);
  renumberExamples();
  updatePreview();
  if (focus) ex.slot.root.querySelector('.drop').focus();
  return ex;
}

function removeExample(ex) {
  const i = examples.indexOf(ex);
  if (i < 0) return;
  ex.slot.destroy();
  ex.li.remove();
  examples.splice(i, 1);
  renumberExamples();
  updatePreview();
  (examples[Math.min(i, examples.length - 1)]?.removeBtn ?? els.addExample).focus();
}

function renumberExamples() {
  const free = els.fewshotTask.value === 'free';
  examples.forEach((ex, i) => {
    const n = i + 1;
    ex.legend.textContent = `Example ${n}`;
    ex.slot.setLabel(`Example ${n} image`);
    ex.textLabel.textContent = free ? `Example ${n} text` : `Example ${n} caption`;
    ex.textInput.placeholder = free ? 'Text that follows the image' : 'A short caption';
    ex.removeBtn.setAttribute('aria-label', `Remove example ${n}`);
    ex.removeBtn.textContent = 'Remove example';
  });
}

async function fillExamples() {
  while (examples.length < 2) addExample();
  const picks = [SAMPLES[0], SAMPLES[1], SAMPLES[2], SAMPLES[3]];
  await Promise.all(examples.slice(0, 3).map((ex, i) => {
    const s = picks[i];
    ex.textInput.value = els.fewshotTask.value === 'free' ? `Output:${s.caption}` : s.caption;
    return loadSample(ex.slot, s);
  }));
  if (!querySlot.image) await loadSample(querySlot, SAMPLES[3]);
  updatePreview();
}

els.addExample.addEventListener('click', () => addExample({ focus: true }));
els.fillExamples.addEventListener('click', fillExamples);
els.fewshotTask.addEventListener('change', () => { syncMode(); renumberExamples(); updatePreview(); });

// ---------------------------------------------------------------------------
// Modes

function currentMode() {
  return $('input[name="mode"]:checked').value;
}

function syncMode() {
  const mode = currentMode();
  els.modeHelp.textContent = MODE_HELP[mode];
  els.fewshotSection.hidden = mode !== 'fewshot';
  els.questionField.hidden = mode !== 'vqa';
  els.promptField.hidden = !(mode === 'fewshot' && els.fewshotTask.value === 'free');
  const queryLabel = mode === 'fewshot' ? 'Query image' : 'Image';
  els.queryTitle.textContent = queryLabel;
  querySlot.setLabel(queryLabel);
  if (mode === 'fewshot' && examples.length === 0) { addExample(); addExample(); }
  updatePreview();
}

for (const r of document.querySelectorAll('input[name="mode"]')) r.addEventListener('change', syncMode);
els.question.addEventListener('input', updatePreview);
els.queryText.addEventListener('input', updatePreview);

// ---------------------------------------------------------------------------
// Settings

function syncSampling() {
  els.temperature.disabled = !els.doSample.checked;
  els.topP.disabled = !els.doSample.checked;
}
els.doSample.addEventListener('change', syncSampling);
syncSampling();

class InputError extends Error {
  constructor(message, focusEl) { super(message); this.focusEl = focusEl; }
}

function readNumber(el, { integer = false, min = -Infinity, max = Infinity, optional = false, name }) {
  const raw = el.value.trim();
  if (raw === '') {
    if (optional) return null;
    throw new InputError(`${name} is required.`, el);
  }
  const n = Number(raw);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n)) || n < min || n > max) {
    const range = Number.isFinite(max) ? `between ${min} and ${max}` : `at least ${min}`;
    throw new InputError(`${name} must be ${integer ? 'a whole number' : 'a number'} ${range}.`, el);
  }
  return n;
}

function readParameters() {
  const p = {
    max_new_tokens: readNumber(els.maxNewTokens, { integer: true, min: 1, max: 4096, name: 'Max new tokens' }),
    num_beams: readNumber(els.numBeams, { integer: true, min: 1, max: 16, name: 'Beams' }),
    do_sample: els.doSample.checked,
    temperature: null,
    top_p: null,
    seed: readNumber(els.seed, { integer: true, min: 0, max: Number.MAX_SAFE_INTEGER, optional: true, name: 'Seed' }),
  };
  if (p.do_sample) {
    p.temperature = readNumber(els.temperature, { min: 0.01, max: 5, name: 'Temperature' });
    const topP = readNumber(els.topP, { min: 0.01, max: 1, name: 'Top-p' });
    p.top_p = topP < 1 ? topP : null; // 1.0 means "off"
  }
  return p;
}

// ---------------------------------------------------------------------------
// Request building (few-shot form of POST /generate[_stream]) and prompt preview

function renderPrompt(req) {
  const ex = req.examples ?? [];
  if (req.task === 'caption') {
    return ex.map((e) => `<image>Output:${e.text}<|endofchunk|>`).join('') + '<image>Output:';
  }
  if (req.task === 'vqa') {
    return ex.map((e) => `<image>Question:${e.question} Short Answer:${e.answer}<|endofchunk|>`).join('')
      + `<image>Question:${req.query.question} Short Answer:`;
  }
  return ex.map((e) => `<image>${e.text}<|endofchunk|>`).join('') + `<image>${req.query.text ?? ''}`;
}

// Returns { task, examples, query } with image placeholders when `withImages` is false.
function buildPromptRequest(withImages) {
  const mode = currentMode();
  const img = (slot, what) => {
    if (!withImages) return '…';
    if (!slot.image) throw new InputError(`${what} has no image yet: choose a file, drop or paste one, or pick a sample.`, slot.root.querySelector('.drop'));
    return slot.image.base64;
  };
  if (mode === 'caption') {
    return { task: 'caption', examples: [], query: { image: img(querySlot, 'The image field') } };
  }
  if (mode === 'vqa') {
    const question = els.question.value.trim();
    if (withImages && !question) throw new InputError('Type a question about the image.', els.question);
    return { task: 'vqa', examples: [], query: { image: img(querySlot, 'The image field'), question } };
  }
  const free = els.fewshotTask.value === 'free';
  const exs = examples.map((ex, i) => {
    const text = ex.textInput.value.trim();
    if (withImages && !text) throw new InputError(`Example ${i + 1} needs a ${free ? 'text' : 'caption'}.`, ex.textInput);
    return { image: img(ex.slot, `Example ${i + 1}`), text };
  });
  const query = { image: img(querySlot, 'The query image') };
  if (free) query.text = els.queryText.value;
  return { task: free ? null : 'caption', examples: exs, query };
}

function updatePreview() {
  try {
    els.promptPreview.textContent = renderPrompt(buildPromptRequest(false));
  } catch {
    els.promptPreview.textContent = '';
  }
}

// ---------------------------------------------------------------------------
// Output panel state

let controller = null; // AbortController of the running request

function setState(state) {
  els.outputPanel.dataset.state = state;
  const running = state === 'waiting' || state === 'streaming';
  els.generate.disabled = running;
  els.stop.disabled = !running;
  els.outputPanel.setAttribute('aria-busy', String(state === 'waiting'));
}

function showError(message) {
  els.error.textContent = message;
  els.error.hidden = !message;
}

function setRunStatus(text) {
  els.runStatus.textContent = text;
}

class ApiError extends Error {
  constructor(message, status, type) { super(message); this.status = status; this.type = type; }
}

// Turns a non-2xx response into a message a person can act on.
async function httpError(res) {
  let bodyText = '';
  try { bodyText = await res.text(); } catch { /* ignore */ }
  let detail = '';
  let type = '';
  try {
    const j = JSON.parse(bodyText);
    if (typeof j.error === 'string') { detail = j.error; type = j.error_type ?? ''; }
    else if (j.error && typeof j.error === 'object') { detail = j.error.message ?? ''; type = j.error.type ?? ''; }
    else if (typeof j.message === 'string') detail = j.message;
  } catch {
    detail = bodyText.trim().slice(0, 300);
  }
  const retry = parseRetryAfter(res.headers.get('retry-after'));
  const retryText = retry != null ? ` Try again in ${retry} s.` : ' Try again in a moment.';
  const suffix = detail ? ` (Server said: ${detail})` : '';
  let msg;
  switch (res.status) {
    case 413: {
      const lim = [];
      if (limits.maxImageBytes) lim.push(formatBytes(limits.maxImageBytes));
      if (limits.maxImagePixels) lim.push(`${(limits.maxImagePixels / 1e6).toFixed(1)} megapixels`);
      msg = `Image too large: the server refused it (HTTP 413). Use a smaller image${lim.length ? ` (limit ${lim.join(' / ')})` : ''}.${suffix}`;
      break;
    }
    case 422:
      msg = /image|decode|format|base64|png|jpe?g/i.test(detail)
        ? `Unsupported or unreadable image (HTTP 422). Use a PNG, JPEG, WebP, GIF or BMP file.${suffix}`
        : `The server rejected the request (HTTP 422).${suffix || ' Check the settings.'}`;
      break;
    case 429:
      msg = `Server busy: all generation slots are taken (HTTP 429).${retryText}${suffix}`;
      break;
    case 503:
      msg = `Server not ready: the model is still loading or the server is shutting down (HTTP 503).${retryText}${suffix}`;
      refreshReady();
      break;
    case 504:
      msg = `The request timed out on the server (HTTP 504). Try fewer new tokens.${suffix}`;
      break;
    case 401:
      msg = `Not authorised (HTTP 401): this server needs an API key, which the demo page cannot send.${suffix}`;
      break;
    case 400:
      msg = `Bad request (HTTP 400).${suffix}`;
      break;
    default:
      msg = `Request failed (HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}).${suffix}`;
  }
  return new ApiError(msg, res.status, type);
}

// Minimal server-sent-events parser (fetch + ReadableStream; EventSource cannot POST).
function createSseParser(onEvent) {
  let buf = '';
  let data = [];
  let event = '';
  const dispatch = () => {
    if (data.length) onEvent({ event: event || 'message', data: data.join('\n') });
    data = [];
    event = '';
  };
  const line = (l) => {
    if (l === '') { dispatch(); return; }
    if (l.startsWith(':')) return; // comment / keep-alive
    const i = l.indexOf(':');
    const field = i < 0 ? l : l.slice(0, i);
    let value = i < 0 ? '' : l.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'event') event = value;
  };
  return {
    push(chunk) {
      buf += chunk;
      const re = /\r\n|\r|\n/g;
      let start = 0;
      let m;
      while ((m = re.exec(buf))) {
        if (m[0] === '\r' && m.index === buf.length - 1) break; // maybe the first half of \r\n
        line(buf.slice(start, m.index));
        start = re.lastIndex;
      }
      buf = buf.slice(start);
    },
    end() {
      if (buf) line(buf);
      buf = '';
      dispatch();
    },
  };
}

function appendOutput(text) {
  if (!text) return;
  els.output.append(document.createTextNode(text));
}

function finishStatus({ finishReason, tokens, started, streamed }) {
  const secs = (performance.now() - started) / 1000;
  const parts = ['Done'];
  if (tokens != null) parts.push(`${tokens} token${tokens === 1 ? '' : 's'}`);
  parts.push(`${secs.toFixed(2)} s`);
  if (finishReason) parts.push(`finish reason: ${finishReason.replace(/_/g, ' ')}`);
  if (!streamed) parts.push('beam search, not streamed');
  return parts.join(' · ');
}

function markFiltered(filtered, finishReason) {
  const yes = filtered === true || finishReason === 'content_filter';
  els.filterBadge.hidden = !yes;
  els.outputPanel.classList.toggle('filtered', yes);
  return yes;
}

async function runStream(body, signal, started) {
  const res = await fetch(apiUrl('generate_stream'), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify(body),
    signal,
  });
  if (!res.ok) throw await httpError(res);
  if (!res.body) throw new ApiError('This browser cannot read streamed responses.', 0, 'client');
  setState('streaming');
  setRunStatus('Generating…');

  let final = null;
  let streamError = null;
  let count = 0;
  let text = '';
  const parser = createSseParser((ev) => {
    if (final || streamError) return;
    if (ev.data === '[DONE]') return;
    let obj;
    try { obj = JSON.parse(ev.data); } catch { return; }
    if (ev.event === 'error' || (obj && obj.error && !obj.token)) {
      const msg = typeof obj.error === 'string' ? obj.error : obj.error?.message ?? 'unknown error';
      const type = obj.error_type ?? obj.error?.type ?? '';
      streamError = new ApiError(`Generation failed after it started: ${msg}${type ? ` (${type})` : ''}.`, 0, type);
      return;
    }
    if (obj.token && !obj.token.special) {
      const t = String(obj.token.text ?? '').replace(/\u2581/g, ' ');
      text += t;
      appendOutput(t);
    }
    if (obj.token) count += 1;
    if (obj.generated_text != null) {
      final = obj;
    } else if (count % 5 === 0 || count < 5) {
      setRunStatus(`Generating… ${count} token${count === 1 ? '' : 's'}`);
    }
  });

  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    while (!final && !streamError) {
      const { value, done } = await reader.read();
      if (done) { parser.end(); break; }
      parser.push(value);
    }
  } finally {
    if (final || streamError) reader.cancel().catch(() => {});
  }
  if (streamError) throw streamError;
  if (!final) throw new ApiError('The stream ended before the final event: the server closed the connection.', 0, 'stream');

  if (final.generated_text !== text) els.output.textContent = final.generated_text;
  const details = final.details ?? {};
  const filtered = markFiltered(final.filtered, details.finish_reason);
  setRunStatus(finishStatus({ finishReason: details.finish_reason, tokens: details.generated_tokens ?? count, started, streamed: true })
    + (filtered ? ' · the content filter changed or stopped the text' : ''));
  setState('done');
}

async function runOnce(body, signal, started) {
  body.parameters.details = true;
  const res = await fetch(apiUrl('generate'), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
  if (!res.ok) throw await httpError(res);
  let j = await res.json();
  if (Array.isArray(j)) j = j[0];
  els.output.textContent = j.generated_text ?? '';
  const details = j.details ?? {};
  const filtered = markFiltered(j.filtered, details.finish_reason);
  setRunStatus(finishStatus({ finishReason: details.finish_reason, tokens: details.generated_tokens, started, streamed: false })
    + (filtered ? ' · the content filter changed or stopped the text' : ''));
  setState('done');
}

async function generate() {
  if (controller) return;
  showError('');
  let body;
  try {
    const prompt = buildPromptRequest(true);
    body = { ...prompt, parameters: readParameters() };
  } catch (e) {
    if (e instanceof InputError) {
      showError(e.message);
      setRunStatus('Fix the highlighted field and try again.');
      e.focusEl?.focus();
      return;
    }
    throw e;
  }

  controller = new AbortController();
  const { signal } = controller;
  const started = performance.now();
  els.output.textContent = '';
  markFiltered(false);
  setState('waiting');
  setRunStatus('Sending the request…');
  // On narrow screens the output sits below the form: bring it into view.
  if (window.matchMedia('(max-width: 820px)').matches) els.outputPanel.scrollIntoView({ block: 'nearest' });
  try {
    if (body.parameters.num_beams > 1) await runOnce(body, signal, started);
    else await runStream(body, signal, started);
  } catch (e) {
    if (signal.aborted) {
      setState('stopped');
      setRunStatus(`Stopped by you after ${((performance.now() - started) / 1000).toFixed(2)} s. ${els.output.textContent ? 'Partial output kept.' : 'No output yet.'}`);
    } else {
      setState('error');
      const msg = e instanceof ApiError ? e.message
        : `Could not reach the server (${e.message}). Check that it is running${API_BASE ? ` at ${API_BASE}` : ''}.`;
      showError(msg);
      setRunStatus(els.output.textContent ? 'Failed. The partial output is kept above.' : 'Failed.');
    }
  } finally {
    controller = null;
  }
}

function stop() {
  controller?.abort();
}

els.form.addEventListener('submit', (e) => {
  e.preventDefault();
  generate();
});
els.stop.addEventListener('click', () => {
  stop();
  els.generate.focus();
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    generate();
  } else if (e.key === 'Escape' && controller) {
    e.preventDefault();
    stop();
  }
});

// ---------------------------------------------------------------------------
// Header: readiness and model id

let readyTimer = null;

async function refreshReady() {
  clearTimeout(readyTimer);
  let state;
  let text;
  try {
    const res = await fetch(apiUrl('ready'), { cache: 'no-store' });
    state = res.ok ? 'ready' : 'not-ready';
    text = res.ok ? 'Ready' : `Not ready (HTTP ${res.status})`;
  } catch {
    state = 'down';
    text = 'Server unreachable';
  }
  if (els.ready.dataset.ready !== state || els.readyText.textContent !== text) {
    els.ready.dataset.ready = state;
    els.readyText.textContent = text;
  }
  if (state === 'ready' && els.modelId.textContent === 'unknown') loadInfo();
  readyTimer = setTimeout(refreshReady, state === 'ready' ? 15000 : 3000);
}

// /info's exact shape is the server's business: look for the first key, at any depth, in priority order.
function findKey(obj, keys) {
  const find = (o, k, depth) => {
    if (!o || typeof o !== 'object' || depth > 3) return undefined;
    if (o[k] != null && typeof o[k] !== 'object') return o[k];
    for (const v of Object.values(o)) {
      const r = find(v, k, depth + 1);
      if (r !== undefined) return r;
    }
    return undefined;
  };
  for (const k of keys) {
    const r = find(obj, k, 0);
    if (r !== undefined) return r;
  }
  return undefined;
}

async function loadInfo() {
  let id;
  try {
    const res = await fetch(apiUrl('info'), { cache: 'no-store' });
    if (res.ok) {
      const info = await res.json();
      id = findKey(info, ['model_id', 'model_name', 'model', 'id', 'name']);
      const bytes = Number(findKey(info, ['max_image_bytes']));
      const pixels = Number(findKey(info, ['max_image_pixels']));
      if (bytes > 0) limits.maxImageBytes = bytes;
      if (pixels > 0) limits.maxImagePixels = pixels;
      const extra = ['dtype', 'device', 'version'].map((k) => [k, findKey(info, [k])]).filter(([, v]) => v != null);
      if (extra.length) els.modelId.title = extra.map(([k, v]) => `${k}: ${v}`).join(', ');
    }
  } catch { /* fall through to /v1/models */ }
  if (id == null) {
    try {
      const res = await fetch(apiUrl('v1/models'), { cache: 'no-store' });
      if (res.ok) id = (await res.json())?.data?.[0]?.id;
    } catch { /* ignore */ }
  }
  els.modelId.textContent = id != null ? String(id) : 'unknown';
}

// ---------------------------------------------------------------------------
// Start

if (API_BASE) {
  els.apiTarget.hidden = false;
  els.apiTarget.textContent = `API: ${API_BASE}`;
}
syncMode();
setState('idle');
refreshReady();
loadInfo();
