// The copyable example (examples/typescript) runs against a fleet as its comment says.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import { AMQP_URL, Fleet } from './fleet.js';

const example = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../../../examples/typescript/dist/receipts.js',
);

describe('examples/typescript', () => {
  it('extracts from text and an image, then runs a batch with progress', async () => {
    assert.ok(
      existsSync(example),
      `${example} is missing: (cd examples/typescript && npm ci && npm run build) (scripts/test does)`,
    );
    const fleet = await Fleet.start();
    await fleet.worker();
    try {
      const { stdout } = await promisify(execFile)(process.execPath, [example], {
        env: { ...process.env, QUARRY_AMQP_URL: AMQP_URL, QUARRY_NAMESPACE: fleet.namespace },
        timeout: 120_000,
      });
      assert.match(stdout, /^text: {2}\{"currency":"\w{3}","merchant":".*","total":[\d.]+\}/m);
      assert.match(stdout, /^image: \{/m);
      assert.match(stdout, /^batch: 50\/50$/m);
      assert.match(stdout, /^batch: 50 stored, 0 failed; the fleet counts \{.*"ok":50/m);
    } finally {
      await fleet.stop();
    }
  });
});
