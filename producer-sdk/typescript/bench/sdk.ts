// The TypeScript side of `quarry-bench sdk` (tests/integration/src/bin/quarry-bench/sdk.rs),
// which starts the fleet and runs the Rust SDK beside this. Prints one JSON line.
//
//   node dist/bench/sdk.js throughput <amqp-url> <namespace> <jobs> <in-flight> <schema-file>
//   node dist/bench/sdk.js outstanding <amqp-url> <namespace> <calls>

import { readFileSync } from 'node:fs';
import { QuarryClient, type BatchJob } from '../src/index.js';

const [mode, url, namespace, count, inFlight, schemaFile] = process.argv.slice(2) as [
  string,
  string,
  string,
  string,
  string | undefined,
  string | undefined,
];
const n = Number(count);
const client = await QuarryClient.connect(url, { namespace });

if (mode === 'throughput') {
  const schema = JSON.parse(readFileSync(schemaFile!, 'utf8')) as object;
  function* jobs(): Generator<BatchJob> {
    for (let i = 0; i < n; i++) {
      yield {
        customId: `c${i}`,
        instructions: 'Extract the expense record.',
        input: [
          {
            type: 'text',
            text: `Cafe Central, 2 coffees 7.00, 1 cake 4.50, TOTAL 11.50 EUR, receipt ${i}`,
          },
        ],
        jsonSchema: schema,
        schemaName: 'receipt',
      };
    }
  }
  const cpu = process.cpuUsage();
  const started = performance.now();
  let received = 0;
  let failed = 0;
  for await (const item of client
    .batch(`bench-${Date.now()}`, { maxInFlight: Number(inFlight) })
    .submit(jobs())) {
    if (item.error !== undefined) failed++;
    received++;
    item.ack();
  }
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  console.log(
    JSON.stringify({
      jobs: received,
      failed,
      seconds,
      jobs_per_s: received / seconds,
      cpu_us_per_job: (used.user + used.system) / received,
    }),
  );
} else if (mode === 'outstanding') {
  // `n` calls at once against a slow provider: memory while all of them wait.
  globalThis.gc?.();
  const baseline = process.memoryUsage();
  let peakRss = baseline.rss;
  let peakHeap = baseline.heapUsed;
  const sampler = setInterval(() => {
    const now = process.memoryUsage();
    peakRss = Math.max(peakRss, now.rss);
    peakHeap = Math.max(peakHeap, now.heapUsed);
  }, 20);
  const started = performance.now();
  const calls = Array.from({ length: n }, (_, i) =>
    client.llm.complete({ prompt: `Summarise: call ${i}`, timeoutMs: 120_000 }),
  );
  const results = await Promise.allSettled(calls);
  clearInterval(sampler);
  console.log(
    JSON.stringify({
      calls: n,
      ok: results.filter((r) => r.status === 'fulfilled').length,
      seconds: (performance.now() - started) / 1000,
      baseline_rss_mib: baseline.rss / 2 ** 20,
      peak_rss_mib: peakRss / 2 ** 20,
      baseline_heap_mib: baseline.heapUsed / 2 ** 20,
      peak_heap_mib: peakHeap / 2 ** 20,
    }),
  );
} else {
  throw new Error(`unknown mode ${mode}`);
}
await client.close();
