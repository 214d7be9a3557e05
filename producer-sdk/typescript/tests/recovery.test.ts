// A producer whose broker connection is closed under it (rabbitmqctl close_connection, as a
// broker restart or a network cut would): the connection is recovered, calls and the batch in
// progress finish, nothing is lost and nothing is paid twice.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { QuarryError, newJobId } from '../src/index.js';
import { Fleet } from './fleet.js';
import { batchJobs } from './jobs.js';

/** Closes every broker connection whose client named itself `name`. */
function closeConnections(name: string): number {
  const listed = execFileSync(
    'rabbitmqctl',
    ['-q', '--no-table-headers', 'list_connections', 'pid', 'client_properties'],
    { encoding: 'utf8' },
  );
  // One line a connection: its pid (`<rabbit@host.1.2.3>`), a tab, its client properties.
  const pids = listed
    .split('\n')
    .filter((line) => line.includes(name))
    .map((line) => line.split('\t')[0]!);
  for (const pid of pids) {
    execFileSync('rabbitmqctl', ['-q', 'close_connection', pid, 'test: connection cut']);
  }
  return pids.length;
}

describe('connection loss', () => {
  it('calls and a batch in progress survive their connection being closed', async () => {
    const fleet = await Fleet.start({ latencyMs: 20 });
    await fleet.worker();
    const name = `quarry-ts-recovery-${newJobId()}`;
    const client = await fleet.client({ connectionName: name });
    try {
      const calls = Array.from({ length: 20 }, (_, i) =>
        client.llm.complete({ prompt: `Summarise: call ${i}`, timeoutMs: 60_000 }),
      );
      const seen = new Map<string, number>();
      let cut = 0;
      for await (const item of client
        .batch(`b-${newJobId()}`, { maxInFlight: 50 })
        .submit(batchJobs(300))) {
        assert.equal(item.error, undefined, item.error?.message);
        seen.set(item.customId, (seen.get(item.customId) ?? 0) + 1);
        item.ack();
        if (cut === 0 && seen.size === 100) cut = closeConnections(name);
      }
      assert.equal(cut, 1, 'the client had one connection, closed mid-batch');
      assert.equal(seen.size, 300);
      assert.ok(
        [...seen.values()].every((n) => n === 1),
        'each custom id exactly once',
      );
      const answers = await Promise.all(calls);
      assert.equal(answers.length, 20);
      for (const answer of answers) assert.match(answer.text, /Extracted/);
      // Jobs published again on the new connection were not run again.
      assert.equal((await fleet.stats()).requests, 320);
    } finally {
      await client.close();
      await fleet.stop();
    }
  });
  it('a connection lost for good fails the calls and the batch waiting on it, typed', async () => {
    const fleet = await Fleet.start({ hangMs: 60_000 });
    // Its hanging calls are not waited for at the end.
    await fleet.worker('', { QUARRY__WORKER__SHUTDOWN_GRACE_SECS: '1' });
    const name = `quarry-ts-give-up-${newJobId()}`;
    const client = await fleet.client({ connectionName: name, reconnect: { maxRetries: 0 } });
    try {
      const call = client.llm.complete({ prompt: '[[fake:timeout]] hangs', timeoutMs: 60_000 });
      const batch = (async () => {
        const jobs = [
          {
            customId: 'only',
            input: [{ type: 'text' as const, text: '[[fake:timeout]] hangs too' }],
          },
        ];
        for await (const item of client.batch(`b-${newJobId()}`).submit(jobs)) item.ack();
      })();
      await fleet.requestsReach(2);
      assert.equal(closeConnections(name), 1);
      for (const pending of [call, batch]) {
        await assert.rejects(
          pending,
          (error: unknown) =>
            error instanceof QuarryError && error.code === 'CONNECTION_LOST' && error.isTransport,
        );
      }
    } finally {
      await client.close();
      await fleet.stop();
    }
  });
});
