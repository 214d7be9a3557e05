// A producer process for the restart test: submits a batch, appends each custom id to a
// file once stored (then acknowledges it), and prints `stored N`. The test kills it.

import { appendFileSync } from 'node:fs';
import { QuarryClient } from '../src/index.js';
import { AMQP_URL } from './fleet.js';
import { batchJobs } from './jobs.js';

const [namespace, batchId, count, file] = process.argv.slice(2) as [string, string, string, string];
const client = await QuarryClient.connect(AMQP_URL, { namespace });
let stored = 0;
for await (const item of client
  .batch(batchId, { maxInFlight: 64 })
  .submit(batchJobs(Number(count)))) {
  appendFileSync(file, `${item.customId}\n`);
  item.ack();
  console.log(`stored ${++stored}`);
}
await client.close();
