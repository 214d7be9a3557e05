// A fleet for one test: the fake provider and quarry-worker processes (the repository's own
// binaries, `cargo build --bins`) on the machine's real RabbitMQ and Redis, in a namespace and
// Redis prefix of its own.

import * as amqp from 'amqplib';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { QuarryClient, type ClientOptions } from '../src/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
export const AMQP_URL = process.env.QUARRY_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f';
const REDIS_URL = process.env.QUARRY_REDIS_URL ?? 'redis://127.0.0.1:6379';

function binary(name: string): string {
  const file = path.join(root, 'target', 'debug', name);
  if (!existsSync(file)) {
    throw new Error(`${file} does not exist: run \`cargo build --bins\` first (scripts/test does)`);
  }
  return file;
}

/** Resolves when `predicate` holds for a line of `stream`; rejects after `ms`. */
function lineMatching(
  stream: NodeJS.ReadableStream,
  predicate: (line: string) => boolean,
  what: string,
  ms = 30_000,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: stream });
    const timer = setTimeout(
      () => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)),
      ms,
    );
    lines.on('line', (line) => {
      if (predicate(line)) {
        clearTimeout(timer);
        resolve(line);
      }
    });
    lines.on('close', () => {
      clearTimeout(timer);
      reject(new Error(`the process ended before ${what}`));
    });
  });
}

export interface FakeOptions {
  /** `--faults` profile, e.g. `rate_limit=0.3`. */
  faults?: string;
  latencyMs?: number;
  hangMs?: number;
  /** Pause before each event of a streamed answer. */
  streamChunkMs?: number;
}

export class Fleet {
  readonly namespace = `qt-ts-${randomBytes(8).toString('hex')}`;
  readonly redisPrefix = `qt-ts-${randomBytes(8).toString('hex')}`;
  fakeUrl = '';
  private fake: ChildProcess | undefined;
  readonly workers: ChildProcess[] = [];
  private readonly dir = mkdtempSync(path.join(tmpdir(), 'quarry-ts-'));

  static async start(fake: FakeOptions = {}): Promise<Fleet> {
    const fleet = new Fleet();
    const args = ['--listen', '127.0.0.1:0', '--hang-ms', String(fake.hangMs ?? 60_000)];
    if (fake.faults !== undefined) args.push('--faults', fake.faults);
    if (fake.latencyMs !== undefined) args.push('--latency-ms', String(fake.latencyMs));
    if (fake.streamChunkMs !== undefined)
      args.push('--stream-chunk-ms', String(fake.streamChunkMs));
    fleet.fake = spawn(binary('quarry-fake-provider'), args, {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const line = await lineMatching(
      fleet.fake.stdout!,
      (l) => l.includes('listening on'),
      'the fake provider',
    );
    fleet.fakeUrl = line.slice(line.indexOf('http://'));
    return fleet;
  }

  /** The worker configuration, with `extra` TOML appended. */
  config(extra = ''): string {
    return `[amqp]
url = "${AMQP_URL}"
namespace = "${this.namespace}"
[redis]
url = "${REDIS_URL}"
prefix = "${this.redisPrefix}"
result_ttl_secs = 600
[http]
listen = "127.0.0.1:0"
[log]
format = "json"
filter = "info"
[worker]
retry_base_ms = 10
claim_ttl_secs = 3
[providers.fake]
base_url = "${this.fakeUrl}"
${extra}`;
  }

  /** Starts a worker process and waits until it consumes. */
  async worker(extra = '', env: Record<string, string> = {}): Promise<ChildProcess> {
    const file = path.join(this.dir, `worker-${this.workers.length}.toml`);
    writeFileSync(file, this.config(extra));
    const child = spawn(binary('quarry-worker'), ['--config', file], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, ...env },
    });
    this.workers.push(child);
    const stderr = child.stderr!;
    // Keep reading, so the pipe never fills; show what is not routine.
    createInterface({ input: stderr }).on('line', (line) => {
      if (!line.includes('"level":"INFO"') && process.env.QUARRY_TEST_VERBOSE)
        console.error(`[worker] ${line}`);
    });
    await lineMatching(stderr, (l) => l.includes('"worker started"'), 'the worker to start');
    return child;
  }

  /** The fake provider's counters. */
  async stats(): Promise<{ requests: number; completions: number }> {
    const response = await fetch(this.fakeUrl.replace(/\/v1$/, '/_fake/stats'));
    return (await response.json()) as { requests: number; completions: number };
  }

  /** Waits until the fake provider has had `n` requests (it has no push event: polled). */
  async requestsReach(n: number, ms = 30_000): Promise<void> {
    const deadline = Date.now() + ms;
    while ((await this.stats()).requests < n) {
      if (Date.now() > deadline)
        throw new Error(`the fake provider did not reach ${n} requests in ${ms} ms`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  async client(options: ClientOptions = {}): Promise<QuarryClient> {
    return QuarryClient.connect(AMQP_URL, { namespace: this.namespace, ...options });
  }

  async stop(): Promise<void> {
    for (const worker of this.workers) {
      if (worker.exitCode === null && worker.signalCode === null) {
        worker.kill('SIGTERM');
        await once(worker, 'exit');
      }
    }
    this.fake?.kill('SIGKILL');
    const connection = await amqp.connect(AMQP_URL);
    const ns = this.namespace;
    const queues = [
      `${ns}.jobs.interactive`,
      `${ns}.jobs.batch`,
      `${ns}.dead`,
      `${ns}.control`,
      `${ns}.expired`,
    ];
    for (const lane of ['interactive', 'batch']) {
      for (const secs of [1, 5, 30, 120, 600]) queues.push(`${ns}.delay.${lane}.${secs}s`);
    }
    for (const queue of queues) {
      const channel = await connection.createChannel();
      channel.on('error', () => undefined);
      await channel.deleteQueue(queue).catch(() => undefined);
      await channel.close().catch(() => undefined);
    }
    for (const exchange of ['jobs', 'dead', 'control', 'results', 'delay']) {
      const channel = await connection.createChannel();
      channel.on('error', () => undefined);
      await channel.deleteExchange(`${ns}.${exchange}`).catch(() => undefined);
      await channel.close().catch(() => undefined);
    }
    await connection.close();
  }
}
