// What needs no broker: the generated types, ids, schema text, result mapping.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ChunkOrder,
  QuarryError,
  Topology,
  batchJobId,
  canonicalJson,
  newJobId,
} from '../src/index.js';
import { encodeJob, fromResult, structuredJob } from '../src/requests.js';
import type { ChunkV1, ResultV1 } from '../src/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));

describe('the package without a broker', () => {
  it('src/generated is what schemas/json gives', () => {
    // Throws (exit 1, naming the stale files) when they differ.
    execFileSync(
      process.execPath,
      [path.resolve(here, '../../scripts/generate-types.mjs'), '--check'],
      {
        stdio: 'pipe',
      },
    );
  });

  it('schema text is compact with sorted keys, whoever wrote the object', () => {
    const a = canonicalJson({
      type: 'object',
      properties: { b: { type: 'string' }, a: { type: 'number' } },
    });
    const b = canonicalJson({
      properties: { a: { type: 'number' }, b: { type: 'string' } },
      type: 'object',
    });
    assert.equal(a, b);
    assert.equal(a, '{"properties":{"a":{"type":"number"},"b":{"type":"string"}},"type":"object"}');
  });

  it('example schemas are written as the Rust SDK writes them (one cache entry in a worker)', () => {
    const examples = path.resolve(here, '../../../../schemas/examples');
    const canonical = JSON.parse(
      readFileSync(path.join(examples, 'canonical.json'), 'utf8'),
    ) as Record<string, string>;
    assert.ok(Object.keys(canonical).length >= 3);
    for (const [name, text] of Object.entries(canonical)) {
      const schema = JSON.parse(readFileSync(path.join(examples, name), 'utf8')) as object;
      assert.equal(canonicalJson(schema), text, name);
    }
  });

  it('a job carries its schema text as written, integer-like keys included', () => {
    const job = structuredJob('j-1', {
      input: [{ type: 'text', text: 'x' }],
      jsonSchema: {
        type: 'object',
        properties: { '9': { type: 'string' }, '10': { type: 'string' } },
      },
    });
    const body = encodeJob(job).toString();
    assert.ok(
      body.includes(
        '"json_schema":{"properties":{"10":{"type":"string"},"9":{"type":"string"}},"type":"object"}',
      ),
      body,
    );
    assert.equal((JSON.parse(body) as { id: string }).id, 'j-1');
  });

  it('ids: v7 for calls, one stable id per batch and custom id', () => {
    assert.match(
      newJobId(),
      /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    );
    assert.notEqual(newJobId(), newJobId());
    assert.equal(batchJobId('b-1', 'row-7'), batchJobId('b-1', 'row-7'));
    assert.notEqual(batchJobId('b-1', 'row-7'), batchJobId('b-2', 'row-7'));
    assert.notEqual(batchJobId('b-1', 'row-7'), batchJobId('b-1row-', '7'));
  });

  it('a namespace that would break the names is refused', () => {
    assert.throws(() => new Topology('prod.#'), RangeError);
    assert.throws(() => new Topology('amq.x'), RangeError);
    assert.equal(new Topology('team_a').privateReplyQueue('p', 'c'), 'team_a.replies.p.rpc-c');
  });

  it('an error code this SDK does not know is kept as text', () => {
    const result: ResultV1 = {
      version: 'result.v1',
      job_id: 'j',
      status: 'error',
      usage: { input_tokens: 0, output_tokens: 0, total_tokens: 0 },
      latency_ms: 0,
      attempts: 0,
      error: { code: 'QUOTA_FROZEN' as 'INTERNAL', message: 'newer fleet', retryable: true },
    };
    assert.throws(
      () => fromResult(result),
      (error: unknown) =>
        error instanceof QuarryError &&
        error.code === 'QUOTA_FROZEN' &&
        !error.isContractCode &&
        error.retryable &&
        error.source === 'job',
    );
  });
});

describe('ChunkOrder', () => {
  const delta = (seq: number, text: string, partial?: unknown): ChunkV1 => ({
    version: 'chunk.v1',
    job_id: 'j',
    seq,
    kind: 'delta',
    text,
    ...(partial === undefined ? {} : { partial: partial as ChunkV1['partial'] }),
  });
  it('keeps order, drops duplicates and strays, and resets a delivery that starts over', () => {
    const order = new ChunkOrder();
    const all = [
      delta(0, '{"a":', {}),
      delta(1, '1'),
      delta(1, '1'), // a duplicate
      delta(5, 'x'), // a gap: not this delivery's
      { version: 'chunk.v1', job_id: 'j', seq: 2, kind: 'reset', reason: 'retry' } as ChunkV1,
      delta(3, '{"a":2}'),
      delta(0, '{"a":3}'), // another delivery, without its reset
    ].flatMap((c) => order.events(c));
    assert.deepEqual(all, [
      { type: 'delta', text: '{"a":' },
      { type: 'partial', value: {} },
      { type: 'delta', text: '1' },
      { type: 'reset', reason: 'retry' },
      { type: 'delta', text: '{"a":2}' },
      { type: 'reset', reason: 'redelivered' },
      { type: 'delta', text: '{"a":3}' },
    ]);
  });
});
