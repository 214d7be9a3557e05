// The TypeScript SDK against the real local model (llama.cpp, SmolLM2), streamed token by
// token. Not part of `npm test`: scripts/test runs it in its real-inference tier, with
// QUARRY_LOCAL_MODEL_URL set to the server it started; without it, this fails saying so.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Type } from '@sinclair/typebox';
import type { QuarryClient } from '../src/index.js';
import { Fleet } from './fleet.js';

const upstream = process.env.QUARRY_LOCAL_MODEL_URL;
const MODEL = 'smollm2-135m';

describe('streamed calls against the local model', () => {
  let fleet: Fleet;
  let client: QuarryClient;
  before(async () => {
    assert.ok(
      upstream,
      'QUARRY_LOCAL_MODEL_URL is not set: scripts/test starts the local model server and sets it',
    );
    fleet = await Fleet.start();
    await fleet.worker(`[providers.local]
kind = "openai_compatible"
base_url = "${upstream}"
timeout_ms = 60000
[routing]
default_alias = "local"
[routing.aliases.local]
provider = "local"
model = "${MODEL}"
images = false
`);
    client = await fleet.client();
  });
  after(async () => {
    await client?.close();
    await fleet?.stop();
  });

  it('completeStructured({stream: true}): deltas, partials, a validated result', async () => {
    let shown = '';
    let deltas = 0;
    let partials = 0;
    let parsed: unknown;
    let text = '';
    for await (const event of client.llm.completeStructured({
      instructions: 'Extract the merchant and the total of the receipt as JSON.',
      input: [{ type: 'text', text: 'Cafe Luna\n2 x espresso 2.80\nTOTAL 5.60 EUR' }],
      jsonSchema: Type.Object({ merchant: Type.String(), total: Type.Number() }),
      timeoutMs: 60_000,
      stream: true,
    })) {
      if (event.type === 'delta') {
        deltas++;
        shown += event.text;
      } else if (event.type === 'partial') partials++;
      else if (event.type === 'reset') shown = '';
      else {
        parsed = event.result.parsed;
        text = event.result.text;
        assert.ok(event.result.usage.outputTokens > 0, 'usage from the stream');
        assert.equal(event.result.model, MODEL);
      }
    }
    assert.ok(deltas >= 2 && partials >= 1, `${deltas} deltas, ${partials} partials`);
    assert.equal(shown, text, 'the deltas make the answer');
    assert.equal(typeof (parsed as { total: unknown }).total, 'number');
    console.log(`TypeScript, streamed from the local model: ${deltas} deltas`);
  });

  it('llm.stream: text', async () => {
    let shown = '';
    let final = '';
    for await (const event of client.llm.stream({
      prompt: 'Say hello in five words.',
      maxTokens: 24,
      timeoutMs: 60_000,
    })) {
      if (event.type === 'delta') shown += event.text;
      else if (event.type === 'reset') shown = '';
      else if (event.type === 'final') final = event.result.text;
    }
    assert.ok(final.length > 0);
    assert.equal(shown, final);
  });
});
