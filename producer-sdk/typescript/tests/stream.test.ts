// Streamed calls through a real worker: every provider kind of the fake provider, in order and
// reassembled; a reset on retry; abort and an early break cancel the job.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Type } from '@sinclair/typebox';
import { QuarryClient, QuarryError, newJobId, type StreamEvent } from '../src/index.js';
import { Fleet } from './fleet.js';

const RECEIPT = Type.Object({
  merchant: Type.String(),
  total: Type.Number(),
  currency: Type.String({ minLength: 3, maxLength: 3 }),
});

// No `maxLength`: Gemini's schema subset has none, so the fake's Gemini would break it.
const EXPENSE = Type.Object({ merchant: Type.String(), total: Type.Number() });

const KINDS = ['openai', 'anthropic', 'gemini', 'openai_compatible'] as const;

/** One provider and alias per kind, all on the fake provider. */
function everyKind(fleet: Fleet): string {
  const gemini = fleet.fakeUrl.replace(/\/v1$/, '/v1beta');
  let toml = `[plugins.guest]
model_override = true
[routing]
default_alias = "openai_compatible"
`;
  for (const kind of KINDS) {
    toml += `[providers.${kind}]
kind = "${kind}"
base_url = "${kind === 'gemini' ? gemini : fleet.fakeUrl}"
[routing.aliases.${kind}]
provider = "${kind}"
model = "${kind}-model"
`;
  }
  return toml;
}

interface Watched<R> {
  events: Array<StreamEvent<R>>;
  deltas: number;
  resets: string[];
  shown: string;
  lastPartial: unknown;
  result: R;
}

async function watch<R>(stream: AsyncIterable<StreamEvent<R>>): Promise<Watched<R>> {
  const watched = { events: [], deltas: 0, resets: [], shown: '' } as unknown as Watched<R>;
  for await (const event of stream) {
    watched.events.push(event);
    switch (event.type) {
      case 'delta':
        watched.deltas++;
        watched.shown += event.text;
        break;
      case 'partial':
        watched.lastPartial = event.value;
        break;
      case 'reset':
        watched.resets.push(event.reason);
        watched.shown = '';
        watched.lastPartial = undefined;
        break;
      case 'final':
        watched.result = event.result;
        break;
    }
  }
  assert.equal(watched.events.at(-1)?.type, 'final', 'the stream ends with its result');
  return watched;
}

describe('streamed calls through the fleet', () => {
  let fleet: Fleet;
  let client: QuarryClient;
  before(async () => {
    fleet = await Fleet.start({ streamChunkMs: 3 });
    await fleet.worker(everyKind(fleet), { QUARRY__WORKER__STREAM_CHUNK_MS: '5' });
    client = await fleet.client();
  });
  after(async () => {
    await client?.close();
    await fleet?.stop();
  });

  for (const kind of KINDS) {
    it(`${kind}: completeStructured({stream: true}) in order, reassembled, typed`, async () => {
      const stream = client.llm.completeStructured({
        model: kind,
        instructions: 'Extract the expense record.',
        input: [{ type: 'text', text: 'Cafe Luna\n2 x espresso 2.80\nTOTAL 5.60 EUR' }],
        jsonSchema: EXPENSE,
        stream: true,
      });
      const watched = await watch(stream);
      assert.ok(watched.deltas >= 3, `${watched.deltas} deltas`);
      assert.equal(watched.shown, watched.result.text, 'the deltas make the result');
      assert.deepEqual(watched.lastPartial, watched.result.parsed);
      assert.equal(typeof watched.result.parsed.total, 'number', 'typed as the schema says');
      assert.ok(
        watched.resets.every((r) => r === 'rewritten'),
        String(watched.resets),
      );
      assert.ok(watched.result.usage.outputTokens > 0, 'usage from the stream');
    });

    it(`${kind}: llm.stream, text`, async () => {
      const watched = await watch(
        client.llm.stream({ model: kind, prompt: 'Summarise: the receipt total is 5.60 EUR' }),
      );
      assert.equal(watched.shown, watched.result.text);
      assert.match(watched.result.text, /Extracted/);
      assert.equal(watched.resets.length, 0);
    });
  }

  it('a stream dropped midway resets and the retry streams from the start', async () => {
    const watched = await watch(
      client.llm.completeStructured({
        input: [{ type: 'text', text: '[[fake:stream_drop]] Cafe Luna TOTAL 5.60 EUR' }],
        jsonSchema: RECEIPT,
        stream: true,
      }),
    );
    assert.deepEqual(watched.resets, ['retry']);
    assert.equal(watched.result.attempts, 2);
    assert.equal(watched.shown, watched.result.text);
    const resetAt = watched.events.findIndex((e) => e.type === 'reset');
    assert.ok(watched.events.slice(0, resetAt).some((e) => e.type === 'delta'));
  });
});

describe('stopping a streamed call', () => {
  let fleet: Fleet;
  let client: QuarryClient;
  before(async () => {
    // A piece every 400 ms: a text answer streams for about 10 s.
    fleet = await Fleet.start({ streamChunkMs: 400 });
    await fleet.worker();
    client = await fleet.client();
  });
  after(async () => {
    await client?.close();
    await fleet?.stop();
  });

  const prompt = 'Write a long summary of this receipt: Cafe Luna, 2 x espresso, TOTAL 5.60 EUR';

  /** The job's stored result, by publishing the same id again: CANCELLED. */
  async function assertCancelled(id: string): Promise<void> {
    const started = Date.now();
    await assert.rejects(
      client.llm.complete({ id, prompt, timeoutMs: 60_000 }),
      (error: unknown) => error instanceof QuarryError && error.code === 'CANCELLED',
    );
    assert.ok(Date.now() - started < 20_000);
  }

  it('an aborted signal ends the stream ABORTED and cancels the job', async () => {
    const id = newJobId();
    const abort = new AbortController();
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const event of client.llm.stream({ id, prompt, signal: abort.signal })) {
          seen.push(event.type);
          if (event.type === 'delta') abort.abort();
        }
      })(),
      (error: unknown) => error instanceof QuarryError && error.code === 'ABORTED',
    );
    assert.deepEqual(seen, ['delta']);
    await assertCancelled(id);
  });

  it('leaving the loop early cancels the job', async () => {
    const id = newJobId();
    for await (const event of client.llm.stream({ id, prompt })) {
      if (event.type === 'delta') break;
    }
    await assertCancelled(id);
    assert.equal((await fleet.stats()).requests, 2, 'one provider call per stopped job');
  });
});
