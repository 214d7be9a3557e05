// Batches: bounded in-flight publishing into a durable per-batch reply queue; results handed
// to the caller, each acknowledged after the caller has stored it.

import type * as amqp from 'amqplib';
import type { ResultV1 } from './generated/result.v1.js';
import type { JobV1 } from './generated/job.v1.js';
import { QuarryError, invalidArgument, transport } from './errors.js';
import {
  encodeJob,
  type StructuredRequest,
  type StructuredResult,
  fromResult,
  laneOf,
  structuredJob,
} from './requests.js';
import { batchJobId, type Lane } from './wire.js';
import type { QuarryClient, Session, BatchStatus } from './client.js';

/** One job of a batch: a structured request with the id you will know it by. */
export type BatchJob = Omit<StructuredRequest, 'signal' | 'timeoutMs' | 'lane' | 'customId'> & {
  /** Unique in the batch; the job id is derived from it, so a job published again after a
   * restart is the same job (and not paid for twice). */
  customId: string;
};

export interface BatchProgress {
  published: number;
  received: number;
  ok: number;
  failed: number;
  /** Published, no result yet. */
  pending: number;
}

export interface BatchOptions {
  /** Lane (default `batch`). */
  lane?: Lane;
  /** Jobs published without a result yet, at most (default 256). */
  maxInFlight?: number;
  /** Called after each publish and each result. */
  onProgress?: (progress: BatchProgress) => void;
  /** Fail the batch when nothing arrives for this long (default: never). */
  idleTimeoutMs?: number;
}

/** One result of a batch. Call `ack()` once you have stored it; an unacknowledged result is
 * delivered again (to this or a restarted producer). */
export interface BatchItem {
  customId: string;
  jobId: string;
  /** The result of a successful job. */
  result: StructuredResult | undefined;
  /** Why the job failed (`source: 'job'`). */
  error: QuarryError | undefined;
  /** The result as it came (`result.v1`). */
  raw: ResultV1;
  ack(): void;
}

interface Delivered {
  item: BatchItem;
}

export class Batch {
  readonly replyQueue: string;
  /** Copies of results already handed over, dropped. */
  duplicates = 0;
  /** Messages in the queue from elsewhere (not the worker user, or not this batch's jobs). */
  foreign = 0;
  private readonly lane: Lane;
  private readonly maxInFlight: number;
  private channel: amqp.Channel | undefined;
  private consumerTag: string | undefined;
  private readonly pending = new Map<string, JobV1>();
  private readonly delivered = new Set<string>();
  private readonly queue: Delivered[] = [];
  private wake: (() => void) | undefined;
  private failure: QuarryError | undefined;
  private readonly progress: BatchProgress = {
    published: 0,
    received: 0,
    ok: 0,
    failed: 0,
    pending: 0,
  };

  constructor(
    private readonly client: QuarryClient,
    readonly id: string,
    private readonly options: BatchOptions,
  ) {
    if (typeof id !== 'string' || id.length < 1 || id.length > 128) {
      throw invalidArgument('batchId', 'must be 1 to 128 characters');
    }
    if (/[*#]/.test(id)) throw invalidArgument('batchId', 'may not contain `*` or `#`');
    this.lane = laneOf({ lane: options.lane }, 'batch');
    this.maxInFlight = options.maxInFlight ?? 256;
    if (!Number.isInteger(this.maxInFlight) || this.maxInFlight < 1) {
      throw invalidArgument('maxInFlight', 'must be a positive integer');
    }
    this.replyQueue = client.topology.batchReplyQueue(client.user, id);
  }

  /** Publishes `jobs` and yields their results as they arrive. */
  submit(jobs: Iterable<BatchJob> | AsyncIterable<BatchJob>): AsyncGenerator<BatchItem> {
    return this.run(jobs, new Set());
  }

  /**
   * After a restart: `jobs` are all the batch's jobs, `received` the custom ids whose results
   * you have stored. The others are published again (a worker runs a job id once: a job that
   * ran is not paid for again, its stored result comes back), and their results yielded.
   */
  resume(
    jobs: Iterable<BatchJob> | AsyncIterable<BatchJob>,
    options: { received: Iterable<string> },
  ): AsyncGenerator<BatchItem> {
    return this.run(jobs, new Set(options.received));
  }

  /** The batch's progress and cost from the fleet's records. */
  async status(options: { timeoutMs?: number } = {}): Promise<BatchStatus> {
    const reply = await this.client.control(
      { version: 'control.v1', action: 'batch_status', batch_id: this.id },
      options,
    );
    return { counts: reply.progress ?? {}, costUsd: reply.cost_usd ?? undefined };
  }

  /** Cancels the batch fleet-wide: jobs not started end `CANCELLED` (their results still come). */
  async cancel(options: { timeoutMs?: number } = {}): Promise<void> {
    await this.client.control(
      { version: 'control.v1', action: 'cancel_batch', batch_id: this.id },
      options,
    );
  }

  /** Deletes the batch's reply queue if it is empty (after every result was acknowledged). */
  async finish(): Promise<void> {
    const session = await this.client.ready(Date.now() + 30_000);
    const channel = await session.model.createChannel();
    channel.on('error', () => undefined);
    await channel.deleteQueue(this.replyQueue, { ifEmpty: true });
    await channel.close().catch(() => undefined);
  }

  private report(): void {
    this.progress.pending = this.pending.size;
    this.options.onProgress?.({ ...this.progress });
  }

  /** @internal (Re)opens the reply channel and consumer on `session`; publishes again what
   * was published on a lost one. */
  async reattach(session: Session): Promise<void> {
    const channel = await session.model.createChannel();
    channel.on('error', () => undefined);
    await channel.prefetch(Math.min(this.maxInFlight * 2, 65_535));
    await channel.assertQueue(this.replyQueue, {
      durable: true,
      arguments: { 'x-queue-type': 'classic' },
    });
    await channel.bindQueue(this.replyQueue, this.client.topology.resultsExchange, this.replyQueue);
    const consumed = await channel.consume(this.replyQueue, (message) => {
      if (message !== null) this.receive(channel, message);
    });
    this.channel = channel;
    this.consumerTag = consumed.consumerTag;
    for (const job of this.pending.values()) {
      void this.publish(job).catch((error: unknown) => this.fail(error));
    }
  }

  private receive(channel: amqp.Channel, message: amqp.ConsumeMessage): void {
    const drop = (): void => settle(channel, message);
    if (message.properties.userId !== this.client.workerUser) {
      this.foreign++;
      return drop();
    }
    let raw: ResultV1;
    try {
      raw = JSON.parse(message.content.toString('utf8')) as ResultV1;
    } catch {
      this.foreign++;
      return drop();
    }
    if (this.delivered.has(raw.job_id)) {
      this.duplicates++;
      return drop();
    }
    const job = this.pending.get(raw.job_id);
    if (job === undefined) {
      this.foreign++;
      return drop();
    }
    this.pending.delete(raw.job_id);
    this.delivered.add(raw.job_id);
    let result: StructuredResult | undefined;
    let error: QuarryError | undefined;
    try {
      result = fromResult(raw) as StructuredResult;
      this.progress.ok++;
    } catch (failure) {
      error = failure as QuarryError;
      this.progress.failed++;
    }
    this.progress.received++;
    const item: BatchItem = {
      customId: raw.custom_id ?? job.custom_id ?? '',
      jobId: raw.job_id,
      result,
      error,
      raw,
      // On a channel lost meanwhile the ack is void: the result comes again and is dropped
      // as a copy of one handed over.
      ack: () => {
        if (this.channel === channel) settle(channel, message);
      },
    };
    this.queue.push({ item });
    this.report();
    this.wake?.();
  }

  /** @internal Ends the batch's iteration with `error` (the connection is gone for good). */
  fail(error: unknown): void {
    this.failure ??=
      error instanceof QuarryError ? error : transport('CONNECTION_LOST', String(error));
    this.wake?.();
  }

  private async publish(job: JobV1): Promise<void> {
    const session = await this.client.ready(Date.now() + 60_000);
    try {
      await this.client.publishOn(
        session,
        this.client.topology.jobsExchange,
        this.lane,
        encodeJob(job),
        this.client.jobProperties(job, this.replyQueue),
      );
    } catch (error) {
      // Lost before the confirm: the next session's `reattach` publishes it again.
      if (!(error instanceof QuarryError && error.code === 'CONNECTION_LOST')) throw error;
    }
  }

  private async *run(
    jobs: Iterable<BatchJob> | AsyncIterable<BatchJob>,
    received: Set<string>,
  ): AsyncGenerator<BatchItem> {
    const session = await this.client.ready(Date.now() + 30_000);
    this.client.track(this, true);
    const seen = new Set<string>();
    try {
      await this.reattach(session);
      const source = (Symbol.asyncIterator in jobs ? jobs : toAsync(jobs))[Symbol.asyncIterator]();
      let exhausted = false;
      for (;;) {
        // Publish while there is room, then hand over what arrived.
        while (!exhausted && this.pending.size < this.maxInFlight && this.failure === undefined) {
          const next = await source.next();
          if (next.done === true) {
            exhausted = true;
            break;
          }
          const job = this.jobOf(next.value, seen);
          if (received.has(next.value.customId)) {
            this.delivered.add(job.id);
            continue;
          }
          this.pending.set(job.id, job);
          this.progress.published++;
          this.report();
          void this.publish(job).catch((error: unknown) => this.fail(error));
        }
        while (this.queue.length > 0) yield this.queue.shift()!.item;
        if (this.failure !== undefined) throw this.failure;
        if (exhausted && this.pending.size === 0) return;
        await this.waitForResult();
      }
    } finally {
      this.client.track(this, false);
      if (this.channel !== undefined && this.consumerTag !== undefined) {
        await this.channel.close().catch(() => undefined);
      }
    }
  }

  private jobOf(job: BatchJob, seen: Set<string>): JobV1 {
    if (
      job === null ||
      typeof job !== 'object' ||
      typeof job.customId !== 'string' ||
      job.customId === ''
    ) {
      throw invalidArgument('customId', 'every job of a batch needs one');
    }
    if (seen.has(job.customId))
      throw invalidArgument('customId', `\`${job.customId}\` is given twice`);
    seen.add(job.customId);
    const wire = structuredJob(batchJobId(this.id, job.customId), { ...job, id: undefined });
    if (wire.json_schema == null && wire.json_mode == null) wire.json_mode = true;
    wire.batch_id = this.id;
    return wire;
  }

  private waitForResult(): Promise<void> {
    const idle = this.options.idleTimeoutMs;
    return new Promise((resolve) => {
      const timer =
        idle === undefined
          ? undefined
          : setTimeout(() => {
              this.failure ??= new QuarryError({
                code: 'CALL_TIMEOUT',
                message: `batch ${this.id}: nothing arrived for ${idle} ms with ${this.pending.size} jobs pending`,
                source: 'client',
                retryable: true,
              });
              resolve();
            }, idle);
      this.wake = () => {
        if (timer !== undefined) clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
    });
  }
}

/** Acknowledges on `channel`; on a channel closed meanwhile nothing is lost (the broker
 * requeues what it had not been told). */
function settle(channel: amqp.Channel, message: amqp.Message): void {
  try {
    channel.ack(message);
  } catch {
    // The channel closed: the message is delivered again and dropped as a copy.
  }
}

async function* toAsync<T>(items: Iterable<T>): AsyncGenerator<T> {
  yield* items;
}
