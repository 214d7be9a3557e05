// One call of each kind end to end through a real worker, typed errors, bad arguments
// refused client-side, abort before start.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Type } from '@sinclair/typebox';
import * as amqp from 'amqplib';
import { QuarryClient, QuarryError, newJobId } from '../src/index.js';
import { AMQP_URL, Fleet } from './fleet.js';

const RECEIPT = Type.Object({
  merchant: Type.String(),
  total: Type.Number(),
  currency: Type.String({ minLength: 3, maxLength: 3 }),
});
// A 1×1 PNG.
const PIXEL = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==',
  'base64',
);

describe('calls through the fleet', () => {
  let fleet: Fleet;
  let client: QuarryClient;
  before(async () => {
    fleet = await Fleet.start();
    await fleet.worker(`[plugins.guest]
model_override = true
agent_id_override = true
allowed_models = ["fake/fake-large", "fake/fake-vision"]
`);
    client = await fleet.client();
  });
  after(async () => {
    await client?.close();
    await fleet?.stop();
  });

  it('complete: text in, text and usage out', async () => {
    const result = await client.llm.complete({
      systemPrompt: 'Answer briefly.',
      prompt: 'Summarise: the receipt total is 5.60 EUR',
      maxTokens: 200,
      purpose: 'summary',
      agentId: 'agent-7',
    });
    assert.equal(result.provider, 'fake');
    assert.match(result.text, /Extracted/);
    assert.equal(result.stopReason, 'stop');
    assert.ok(result.usage.inputTokens > 0 && result.usage.outputTokens > 0);
    assert.equal(result.usage.totalTokens, result.usage.inputTokens + result.usage.outputTokens);
    assert.ok(result.latencyMs >= 0);
    assert.equal(typeof result.queueMs, 'number', 'the SDK sets the publish-time header');
  });

  it('completeStructured: a TypeBox schema, text and an image, typed parsed', async () => {
    const result = await client.llm.completeStructured({
      instructions: 'Extract the expense record.',
      input: [
        { type: 'text', text: 'Cafe Luna\n2 x espresso 2.80\nTOTAL 5.60 EUR' },
        { type: 'image', buffer: PIXEL, mime: 'image/png', fileName: 'receipt.png' },
      ],
      jsonSchema: RECEIPT,
      schemaName: 'receipt.evidence',
    });
    assert.equal(result.contentType, 'application/json');
    // `parsed` is typed from the schema: these compile only as a string and a number.
    const merchant: string = result.parsed.merchant;
    const total: number = result.parsed.total;
    assert.equal(typeof merchant, 'string');
    assert.equal(typeof total, 'number');
    assert.equal(result.parsed.currency.length, 3);
    assert.deepEqual(JSON.parse(result.text), result.parsed);
  });

  it('completeStructured: JSON mode without a schema', async () => {
    const result = await client.llm.completeStructured({
      input: [{ type: 'text', text: 'Give the total of: TOTAL 5.60 EUR' }],
      jsonMode: true,
    });
    assert.equal(result.contentType, 'application/json');
    assert.equal(typeof result.parsed, 'object');
  });

  it('extractStructuredWithModel: an explicit provider and model, image first', async () => {
    const result = await client.extractStructuredWithModel({
      provider: 'fake',
      model: 'fake-vision',
      input: [{ type: 'image', data: PIXEL.toString('base64'), mime: 'image/png' }],
      jsonSchema: RECEIPT,
    });
    assert.equal(result.model, 'fake-vision');
    assert.equal(typeof result.parsed.total, 'number');
  });

  it('a fleet that is not there is a typed error, and the connection is not left open', async () => {
    await assert.rejects(
      QuarryClient.connect(AMQP_URL, { namespace: `absent-${newJobId()}` }),
      (error: unknown) =>
        error instanceof QuarryError && error.code === 'TOPOLOGY_MISSING' && error.isTransport,
    );
  });

  it('describe: what this plugin may use', async () => {
    const description = await client.describe();
    assert.equal(description.plugin, 'guest');
    assert.equal(description.model_override, true);
    assert.ok(description.aliases.some((alias) => alias.name === 'default'));
    assert.deepEqual(description.targets.map((t) => t.model).sort(), ['fake-large', 'fake-vision']);
  });

  it('a failed job is a QuarryError with the contract code', async () => {
    const cases: Array<[() => Promise<unknown>, string]> = [
      [() => client.llm.complete({ prompt: 'x', model: 'no-such-alias' }), 'MODEL_UNRESOLVED'],
      [
        () =>
          client.extractStructuredWithModel({
            provider: 'fake',
            model: 'not-granted',
            input: [{ type: 'image', buffer: PIXEL, mime: 'image/png' }],
          }),
        'NOT_AUTHORIZED',
      ],
      [
        () =>
          client.llm.completeStructured({
            input: [{ type: 'text', text: 'x' }],
            jsonSchema: { type: 'objekt' },
          }),
        'INVALID_REQUEST',
      ],
      [() => client.llm.complete({ prompt: '[[fake:auth]] x' }), 'AUTH_FAILED'],
      [() => client.llm.complete({ prompt: '[[fake:bad_request]] x' }), 'INVALID_REQUEST'],
      [() => client.llm.complete({ prompt: '[[fake:server_error*9]] x' }), 'PROVIDER_ERROR'],
      [() => client.llm.complete({ prompt: '[[fake:overloaded*9]] x' }), 'MODEL_UNAVAILABLE'],
      [
        () => client.llm.complete({ prompt: '[[fake:payment_required*9]] x' }),
        'CREDENTIALS_EXHAUSTED',
      ],
      [() => client.llm.complete({ prompt: '[[fake:rate_limit*9]] x' }), 'RATE_LIMITED'],
      [
        () => client.llm.complete({ prompt: '[[fake:timeout*9]] x', attemptTimeoutMs: 1_000 }),
        'TIMEOUT',
      ],
      [
        // A job whose deadline passed before it started (a hand-built job with its own deadline).
        () =>
          client
            .call(
              {
                version: 'job.v1',
                id: newJobId(),
                input: [{ type: 'text', text: 'x' }],
                deadline_ms: Date.now() - 1_000,
              },
              {},
            )
            .then((result) => {
              if (result.status === 'error') {
                throw new QuarryError({
                  code: result.error!.code,
                  message: result.error!.message,
                  source: 'job',
                  jobId: result.job_id,
                });
              }
            }),
        'DEADLINE_EXCEEDED',
      ],
      [
        () =>
          client.llm.completeStructured({
            input: [{ type: 'text', text: '[[fake:refusal*9]] x' }],
            jsonSchema: RECEIPT,
          }),
        'OUTPUT_INVALID',
      ],
    ];
    for (const [call, code] of cases) {
      await assert.rejects(call, (error: unknown) => {
        assert.ok(error instanceof QuarryError, String(error));
        assert.equal(error.code, code, error.message);
        assert.equal(error.source, 'job');
        assert.equal(error.isContractCode, true);
        assert.equal(typeof error.jobId, 'string');
        return true;
      });
    }
  });

  it('a job cancelled before it is published ends CANCELLED, typed', async () => {
    const id = newJobId();
    await client.cancel(id);
    await assert.rejects(
      client.llm.complete({ id, prompt: 'receipt, total 4' }),
      (error: unknown) =>
        error instanceof QuarryError &&
        error.code === 'CANCELLED' &&
        error.source === 'job' &&
        error.jobId === id,
    );
  });

  it('results are taken only from the worker user of the fleet', async () => {
    // This client expects another worker user: the fleet's answers (from `guest`) are dropped.
    const wary = await fleet.client({ workerUser: 'quarry-worker-elsewhere' });
    try {
      await assert.rejects(
        wary.llm.complete({ prompt: 'receipt, total 5', timeoutMs: 3_000 }),
        (error: unknown) => error instanceof QuarryError && error.code === 'CALL_TIMEOUT',
      );
      assert.ok(wary.foreign >= 1, `dropped ${wary.foreign}`);
    } finally {
      await wary.close();
    }
  });

  it('a spent plugin budget is BUDGET_EXCEEDED, typed', async () => {
    const tight = await Fleet.start();
    await tight.worker('[plugins.guest]\ndaily_tokens = 10\n');
    const spent = await tight.client();
    try {
      await assert.rejects(
        spent.llm.complete({ prompt: 'Summarise: a receipt of many words', maxTokens: 500 }),
        (error: unknown) =>
          error instanceof QuarryError && error.code === 'BUDGET_EXCEEDED' && !error.retryable,
      );
    } finally {
      await spent.close();
      await tight.stop();
    }
  });

  it('bad arguments are refused before anything is published, naming the field', async () => {
    const before = (await fleet.stats()).requests;
    const cases: Array<[() => Promise<unknown>, string]> = [
      [() => client.llm.complete({ prompt: 'x', maxTokens: 0 }), 'maxTokens'],
      [() => client.llm.complete({ prompt: 'x', temperature: 3 }), 'temperature'],
      [
        () => client.llm.complete({ prompt: 'x', stopSequences: ['a', 'b', 'c', 'd', 'e'] }),
        'stopSequences',
      ],
      [() => client.llm.complete({ messages: [] }), 'messages'],
      [() => client.llm.complete({ prompt: 'x', timeoutMs: -5 }), 'timeoutMs'],
      [() => client.llm.complete({ prompt: 'x', reasoning: 'lots' as 'high' }), 'reasoning'],
      [
        () =>
          client.llm.completeStructured({
            input: [{ type: 'image', data: 'aGk_-w==', mime: 'image/png' }],
          }),
        'input[0].data',
      ],
      [
        () =>
          client.llm.completeStructured({
            input: [{ type: 'image', buffer: PIXEL, mime: 'image/tiff' as 'image/png' }],
          }),
        'input[0].mime',
      ],
      [() => client.llm.completeStructured({ input: [], jsonMode: true }), 'input'],
      [
        () =>
          client.llm.completeStructured({
            input: [{ type: 'text', text: 'x' }],
            schemaName: 'has space',
          }),
        'schemaName',
      ],
      [
        () =>
          client.llm.completeStructured({
            input: [{ type: 'text', text: 'x' }],
            jsonSchema: RECEIPT,
            jsonMode: false,
          }),
        'jsonMode',
      ],
      [
        () =>
          client.extractStructuredWithModel({
            provider: 'fake',
            model: 'm',
            input: [{ type: 'text', text: 'x' }],
          }),
        'input',
      ],
      [() => client.cancel(''), 'jobId'],
    ];
    for (const [call, field] of cases) {
      await assert.rejects(call, (error: unknown) => {
        assert.ok(error instanceof QuarryError, String(error));
        assert.equal(error.code, 'INVALID_ARGUMENT', error.message);
        assert.equal(error.source, 'client');
        assert.equal(error.details?.field, field, error.message);
        assert.ok(error.message.startsWith(field), error.message);
        return true;
      });
    }
    assert.equal((await fleet.stats()).requests, before, 'nothing reached the provider');
  });

  it('an aborted call cancels its job: no provider call', async () => {
    // One job permit, taken by a call that hangs at the provider: the aborted job waits
    // behind it, so it is cancelled before it starts.
    const busy = await Fleet.start({ hangMs: 60_000 });
    await busy.worker('', { QUARRY__WORKER__CONCURRENCY: '1' });
    const busyClient = await busy.client();
    const connection = await amqp.connect(AMQP_URL);
    try {
      // Watch everything routed to this plugin's reply queues (results and control replies).
      const channel = await connection.createChannel();
      const watch = await channel.assertQueue('', { exclusive: true });
      await channel.bindQueue(
        watch.queue,
        `${busy.namespace}.results`,
        `${busy.namespace}.replies.guest.#`,
      );
      const replies: Array<{ type: unknown; body: Record<string, unknown> }> = [];
      let arrived: () => void = () => undefined;
      await channel.consume(
        watch.queue,
        (m) => {
          if (m === null) return;
          replies.push({
            type: m.properties.type,
            body: JSON.parse(m.content.toString()) as Record<string, unknown>,
          });
          arrived();
        },
        { noAck: true },
      );
      const until = async (predicate: () => boolean): Promise<void> => {
        while (!predicate()) await new Promise<void>((resolve) => (arrived = resolve));
      };
      const hangId = newJobId();
      const hanging = busyClient.llm.complete({
        prompt: '[[fake:timeout]] receipt, total 1',
        id: hangId,
        timeoutMs: 60_000,
      });
      hanging.catch(() => undefined);
      await busy.requestsReach(1);

      const abort = new AbortController();
      const call = busyClient.llm.complete({
        prompt: 'receipt, total 3',
        signal: abort.signal,
        timeoutMs: 60_000,
      });
      abort.abort();
      await assert.rejects(
        call,
        (error: unknown) => error instanceof QuarryError && error.code === 'ABORTED',
      );
      // The abort's cancel_job is applied (its reply goes to the client's queue).
      await until(() =>
        replies.some((r) => r.body.action === 'cancel_job' && r.body.status === 'ok'),
      );
      // Aborted before the call is even made: nothing is published.
      const early = new AbortController();
      early.abort();
      await assert.rejects(
        busyClient.llm.complete({ prompt: 'x', signal: early.signal }),
        (error: unknown) => error instanceof QuarryError && error.code === 'ABORTED',
      );
      // Free the permit: the aborted job starts, and ends CANCELLED without a call.
      await busyClient.cancel(hangId, { timeoutMs: 10_000 });
      await until(() => replies.filter((r) => r.type === 'quarry.result.v1').length >= 2);
      const results = replies.filter((r) => r.type === 'quarry.result.v1').map((r) => r.body);
      for (const result of results) {
        assert.equal((result.error as { code: string }).code, 'CANCELLED', JSON.stringify(result));
      }
      const aborted = results.find((r) => r.attempts === 0);
      assert.ok(aborted, `the aborted job never reached the provider: ${JSON.stringify(results)}`);
      assert.equal((await busy.stats()).requests, 1, 'only the hanging call reached the provider');
    } finally {
      await connection.close();
      await busyClient.close();
      await busy.stop();
    }
  });
});
