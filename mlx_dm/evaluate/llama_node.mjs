// The exported GGUF in llama.rn's engine: @fugood/llama.node, the Node twin of llama.rn (same authors,
// same llama.cpp core and API), loaded with the options the game app used, so what passes here is
// what a React Native app will get. Run by mlx_dm/evaluate/llama_node.py (`mlx-dm validate`) and by
// tests/js/llama_node.test.mjs:
//
//   node llama_node.mjs REQUEST.json RESULT.json   (a file: llama.cpp's own logs go to stdout)
//
// REQUEST.json: { module_dir, model, load: {...}, conversations: [{ messages, expected }],
//                 stops: { app: [...], recommended: [...] }, n_predict, call_pattern }
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

function firstDifference(a, b) {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i += 1;
  return i === a.length && i === b.length ? -1 : i;
}

// The calls the app's agent would read, with its own pattern (`/\[(\w+):([^\]]+)\]/g`, name lower-cased).
function parseCalls(text, pattern) {
  const regex = new RegExp(pattern, 'g');
  return [...text.matchAll(regex)].map((match) => ({ name: match[1].toLowerCase(), arguments: match[2].trim() }));
}

// Upstream quirk, patched here only: llama.node 1.7.15 (llama.rn's completion loop) leaves every stop
// flag false when n_predict runs out while the text ends inside a multi-byte character (the held-back
// token is not counted: tokens_predicted is n_predict - 1). tests/js/llama_node.test.mjs fails without it.
function ranOutInsideACharacter(result, nPredict) {
  return !result.stopped_eos && !result.stopped_words && result.tokens_predicted >= nPredict - 1;
}

async function generate(context, messages, stop, request) {
  const result = await context.completion({
    messages, jinja: true, stop, n_predict: request.n_predict, temperature: 0, top_k: 1,
    // The app's tool grammar as `grammar` (not lazy: with jinja on, llama.rn lets the chat template's
    // lazy triggers replace the caller's; this grammar's root works from the first token).
    ...(request.grammar ? { grammar: request.grammar } : {}),
  });
  return {
    stop,
    text: result.text,
    stopped_eos: Boolean(result.stopped_eos),
    stopped_on_word: Boolean(result.stopped_words),
    stopped_word: result.stopped_words ? result.stopping_word || '' : '',
    stopped_limit: Boolean(result.stopped_limited) || ranOutInsideACharacter(result, request.n_predict),
    calls: parseCalls(result.text, request.call_pattern),
    tokens_per_second: result.timings ? result.timings.predicted_per_second : null,
  };
}

export async function check(request) {
  const require = createRequire(path.join(request.module_dir, 'package.json'));
  const { loadModel } = require('@fugood/llama.node');
  const started = Date.now();
  let context;
  try {
    context = await loadModel({ model: request.model, ...request.load });
  } catch (err) {
    return { loaded: false, error: String(err && err.message ? err.message : err) };
  }
  const out = { loaded: true, load_ms: Date.now() - started, renders: [], generations: {} };
  try {
    for (const { messages, expected } of request.conversations) {
      const formatted = await context.getFormattedChat(messages, null, { jinja: true });
      const at = firstDifference(formatted.prompt, expected);
      out.renders.push({ equal: at < 0, at, got: at < 0 ? '' : formatted.prompt.slice(at, at + 60), expected: at < 0 ? '' : expected.slice(at, at + 60) });
    }
    const last = request.conversations[request.conversations.length - 1].messages;
    for (const [name, stop] of Object.entries(request.stops)) out.generations[name] = await generate(context, last, stop, request);
  } finally {
    await context.release();
  }
  return out;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const request = JSON.parse(readFileSync(process.argv[2], 'utf8'));
  const write = (result) => writeFileSync(process.argv[3], `${JSON.stringify(result)}\n`);
  check(request).then(write, (err) => {
    write({ loaded: false, error: String(err && err.stack ? err.stack : err) });
    process.exitCode = 1;
  });
}
