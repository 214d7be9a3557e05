// Batches through worker processes: each custom id exactly once, a worker killed mid-batch,
// a producer killed and restarted.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import type { BatchProgress } from '../src/index.js';
import { Fleet } from './fleet.js';
import { batchJobs } from './jobs.js';

const here = path.dirname(fileURLToPath(import.meta.url));

describe('batches', () => {
  it('1,000 jobs through two workers, one killed with SIGKILL mid-batch: each custom id once', async () => {
    const fleet = await Fleet.start({ latencyMs: 5 });
    const victim = await fleet.worker();
    await fleet.worker();
    const client = await fleet.client();
    try {
      const batch = client.batch(`b-${Date.now()}`, { maxInFlight: 200 });
      const progress: BatchProgress[] = [];
      const seen = new Map<string, number>();
      let killed = false;
      for await (const item of client
        .batch(batch.id, { maxInFlight: 200, onProgress: (p) => progress.push(p) })
        .submit(batchJobs(1000))) {
        assert.equal(item.error, undefined, item.error?.message);
        assert.equal(typeof item.result?.parsed, 'object');
        seen.set(item.customId, (seen.get(item.customId) ?? 0) + 1);
        item.ack();
        if (!killed && seen.size === 300) {
          victim.kill('SIGKILL');
          killed = true;
        }
      }
      assert.ok(killed);
      assert.equal(seen.size, 1000);
      assert.ok(
        [...seen.values()].every((n) => n === 1),
        'each custom id exactly once',
      );
      const last = progress.at(-1)!;
      assert.deepEqual(
        [last.published, last.received, last.ok, last.pending],
        [1000, 1000, 1000, 0],
      );
      const status = await batch.status();
      assert.ok((status.counts.ok ?? 0) >= 1000, JSON.stringify(status));
      await batch.finish();
    } finally {
      await client.close();
      await fleet.stop();
    }
  });

  it('a producer killed and restarted collects the rest of its batch without paying twice', async () => {
    const fleet = await Fleet.start({ latencyMs: 5 });
    await fleet.worker();
    const dir = mkdtempSync(path.join(tmpdir(), 'quarry-ts-producer-'));
    const file = path.join(dir, 'stored.txt');
    const batchId = `b-${Date.now()}`;
    const total = 400;
    const child = spawn(
      process.execPath,
      [path.join(here, 'producer-child.js'), fleet.namespace, batchId, String(total), file],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: child.stdout! }).on('line', (line) => {
        if (line === 'stored 100') {
          child.kill('SIGKILL');
          resolve();
        }
      });
      child.once('exit', (code) =>
        reject(new Error(`the producer exited (${code}) before storing 100`)),
      );
    });
    await new Promise((resolve) => child.once('exit', resolve));
    const before = existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
    assert.ok(
      before.length >= 100 && before.length < total,
      `${before.length} stored before the kill`,
    );

    const client = await fleet.client();
    try {
      const again = new Set<string>();
      for await (const item of client
        .batch(batchId)
        .resume(batchJobs(total), { received: before })) {
        assert.equal(item.error, undefined, item.error?.message);
        assert.ok(!before.includes(item.customId), `${item.customId} was stored before`);
        assert.ok(!again.has(item.customId), `${item.customId} twice`);
        again.add(item.customId);
        item.ack();
      }
      assert.equal(before.length + again.size, total);
      // Each job reached the provider once: the jobs published again were not run again.
      assert.equal((await fleet.stats()).requests, total);
      await client.batch(batchId).finish();
    } finally {
      await client.close();
      await fleet.stop();
    }
  });
  it('a cancelled batch still gets one result per job; those not started are CANCELLED', async () => {
    const fleet = await Fleet.start({ latencyMs: 200 });
    await fleet.worker('', { QUARRY__WORKER__CONCURRENCY: '4' });
    const client = await fleet.client();
    try {
      const batch = client.batch(`b-${Date.now()}`, { maxInFlight: 200 });
      const outcomes = new Map<string, string>();
      let cancelled = false;
      for await (const item of batch.submit(batchJobs(200))) {
        assert.ok(!outcomes.has(item.customId), `${item.customId} twice`);
        outcomes.set(item.customId, item.error?.code ?? 'ok');
        item.ack();
        if (!cancelled) {
          await batch.cancel();
          cancelled = true;
        }
      }
      assert.equal(outcomes.size, 200);
      const counts = [...outcomes.values()].reduce<Record<string, number>>((acc, code) => {
        acc[code] = (acc[code] ?? 0) + 1;
        return acc;
      }, {});
      assert.ok((counts.CANCELLED ?? 0) >= 150, JSON.stringify(counts));
      assert.equal((counts.ok ?? 0) + (counts.CANCELLED ?? 0), 200, JSON.stringify(counts));
      const status = await batch.status();
      assert.equal(status.counts.CANCELLED, counts.CANCELLED, JSON.stringify(status));
      assert.ok((await fleet.stats()).requests < 50, 'cancelled jobs never reached the provider');
      await batch.finish();
    } finally {
      await client.close();
      await fleet.stop();
    }
  });
});
