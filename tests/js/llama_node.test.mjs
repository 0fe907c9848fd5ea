// The exported GGUF in llama.rn's engine (@fugood/llama.node), with node's own test runner.
// tests/test_export.py writes the request (the GGUF, the app's load options, conversations with the
// text training rendered them as) and runs: MLX_DM_NODE_REQUEST=request.json node --test tests/js/
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { check } from '../../mlx_dm/evaluate/llama_node.mjs';

const request = JSON.parse(readFileSync(process.env.MLX_DM_NODE_REQUEST, 'utf8'));
const result = await check(request);

test('loads with the options the app passed', () => {
  assert.equal(result.error, undefined);
  assert.ok(result.loaded);
  assert.deepEqual(Object.keys(request.load).sort(), ['n_batch', 'n_ctx', 'n_gpu_layers', 'n_threads']);
});

test("the GGUF's own template, in llama.cpp's Jinja, renders every conversation as training did", () => {
  assert.equal(result.renders.length, request.conversations.length);
  assert.ok(request.conversations.some((c) => c.messages.length >= 3), 'a conversation of several turns');
  assert.ok(request.conversations.some((c) => c.messages.some((m) => m.content.startsWith('Tool results:'))));
  for (const render of result.renders) assert.ok(render.equal, `differs at ${render.at}: ${render.got} vs ${render.expected}`);
});

test('generates with the app\'s stop list and with the recommended one', () => {
  const { app, recommended } = result.generations;
  assert.deepEqual(app.stop, ['<|end_of_text|>', '<|endoftext|>', '</s>', '<end_of_utterance>']);
  assert.ok(recommended.stop.includes('<end_of_turn>'));
  for (const run of [app, recommended]) {
    assert.equal(typeof run.text, 'string');
    assert.ok(run.stopped_eos || run.stopped_on_word || run.stopped_limit);
    assert.ok(!run.text.includes('<end_of_turn>'));  // an end-of-generation token ends the reply either way
    assert.ok(run.tokens_per_second > 0);
    console.log(`decode ${run.tokens_per_second.toFixed(1)} tokens/s with stop ${JSON.stringify(run.stop)}`);
  }
});

test("calls are read with the app's pattern", () => {
  const pattern = new RegExp(request.call_pattern, 'g');
  const found = [...'Roll! [roll: perception] then [Heal: Brakka, 1d8+3]'.matchAll(pattern)].map((m) => m[1].toLowerCase());
  assert.deepEqual(found, ['roll', 'heal']);
  for (const run of Object.values(result.generations)) {
    assert.deepEqual(run.calls, [...run.text.matchAll(pattern)].map((m) => ({ name: m[1].toLowerCase(), arguments: m[2].trim() })));
  }
});

test("under the app's tool grammar, a '[' only ever opens a call", () => {
  assert.ok(request.grammar && request.grammar.includes('root ::='), 'the request carries the grammar');
  const pattern = new RegExp(request.call_pattern, 'g');
  for (const run of Object.values(result.generations)) {
    const opened = (run.text.match(/\[/g) || []).length;
    const calls = [...run.text.matchAll(pattern)].length;
    // A reply cut by n_predict may end inside its last call.
    assert.ok(opened === calls || (run.stopped_limit && opened === calls + 1), run.text);
  }
});
