// The connection, single calls, control requests and the reply router.

import * as amqp from 'amqplib';
import { randomBytes } from 'node:crypto';
import type { ChunkV1 } from './generated/chunk.v1.js';
import type { ControlReplyV1 } from './generated/control-reply.v1.js';
import type { ControlV1 } from './generated/control.v1.js';
import type { JobV1 } from './generated/job.v1.js';
import type { ResultV1 } from './generated/result.v1.js';
import { QuarryError, invalidArgument, transport } from './errors.js';
import {
  type CallOptions,
  type CompleteRequest,
  type JsonSchemaLike,
  type StaticOf,
  type StructuredRequest,
  type StructuredResult,
  type CallResult,
  completeJob,
  encodeJob,
  fromResult,
  laneOf,
  structuredJob,
  timeoutOf,
} from './requests.js';
import {
  CONTENT_TYPE_JSON,
  HEADER_PUBLISHED_MS,
  HEADER_TRACEPARENT,
  MESSAGE_TYPE_CHUNK,
  MESSAGE_TYPE_CONTROL,
  MESSAGE_TYPE_JOB,
  Topology,
  newJobId,
  newTraceparent,
  type Lane,
} from './wire.js';
import { Batch, type BatchOptions } from './batch.js';
import { streamed, type StreamEvent } from './stream.js';

/** How to connect. */
export interface ClientOptions {
  /** The fleet's namespace (default `quarry`). */
  namespace?: string;
  /**
   * The AMQP user the fleet's workers log in as: results are taken only from it (default
   * `guest`, the development fleet's; a production operator names theirs).
   */
  workerUser?: string;
  /** Shown in the broker's connection list. */
  connectionName?: string;
  /** How long a lost connection is retried before calls fail (default: without end). */
  reconnect?: { maxRetries?: number; maxDelayMs?: number };
}

/** What a plugin may use ([`describe`](QuarryClient.describe)). */
export type Description = NonNullable<ControlReplyV1['description']>;

/** A batch's progress as the fleet records it. */
export interface BatchStatus {
  /** Results stored so far by outcome (`ok` or an error code), and `tokens`. */
  counts: Record<string, number>;
  costUsd: number | undefined;
}

/** One connection to the broker and what was set up on it. */
export interface Session {
  readonly id: number;
  readonly model: amqp.ChannelModel;
  readonly publish: amqp.ConfirmChannel;
  readonly replyQueue: string;
}

interface PendingCall {
  job: JobV1;
  lane: Lane;
  /** A streamed call's chunks. */
  onChunk?: ((chunk: ChunkV1) => void) | undefined;
  /** The session it was last published on. */
  session: number | undefined;
  resolve(result: ResultV1): void;
  reject(error: QuarryError): void;
}

interface PendingControl {
  request: ControlV1;
  session: number | undefined;
  resolve(reply: ControlReplyV1): void;
}

const noop = (): void => undefined;

/**
 * A plugin's connection to the Quarry fleet: every method may be called concurrently. The
 * connection is recovered when lost (amqplib's recovery): calls and batches in progress are
 * published again on the new one (a worker runs a job id once, so nothing is paid twice).
 */
export class QuarryClient {
  readonly topology: Topology;
  /** The platform's completion calls. */
  readonly llm: {
    complete(request: CompleteRequest): Promise<CallResult>;
    /** `complete`, streamed: deltas, resets, then the result ([`StreamEvent`]). */
    stream(request: CompleteRequest): AsyncIterable<StreamEvent<CallResult>>;
    completeStructured<S extends JsonSchemaLike, T = StaticOf<S>>(
      request: StructuredRequest<S> & { stream: true },
    ): AsyncIterable<StreamEvent<StructuredResult<T>>>;
    completeStructured<S extends JsonSchemaLike, T = StaticOf<S>>(
      request: StructuredRequest<S> & { stream?: false },
    ): Promise<StructuredResult<T>>;
  };
  /** The AMQP user: the plugin, as the broker vouches for it. */
  readonly user: string;
  readonly workerUser: string;
  /** Replies dropped: not from the worker user, or for no pending call. */
  foreign = 0;

  private connection: amqp.RecoveringChannelModel | undefined;
  private session: Session | undefined;
  private sessions = 0;
  private waiting: Array<(session: Session | undefined) => void> = [];
  private readonly returned = new Set<string>();
  private readonly calls = new Map<string, PendingCall>();
  private readonly controls = new Map<string, PendingControl>();
  private readonly batches = new Set<Batch>();
  private closed = false;

  private constructor(url: string, options: ClientOptions) {
    this.topology = new Topology(options.namespace);
    this.workerUser = options.workerUser ?? 'guest';
    let user: string;
    try {
      user = decodeURIComponent(new URL(url).username) || 'guest';
    } catch {
      throw invalidArgument('url', 'is not an AMQP URL (amqp://user:password@host:port/vhost)');
    }
    this.user = user;
    const textOf = (result: ResultV1): CallResult => {
      const { parsed: _parsed, contentType: _type, ...rest } = fromResult(result);
      return rest;
    };
    const structured = (request: StructuredRequest): JobV1 => {
      const job = structuredJob(request.id ?? newJobId(), request);
      if (job.json_schema == null && job.json_mode == null) job.json_mode = true;
      return job;
    };
    const completeStructured = <S extends JsonSchemaLike, T = StaticOf<S>>(
      request: StructuredRequest<S> & { stream?: boolean },
    ): Promise<StructuredResult<T>> | AsyncIterable<StreamEvent<StructuredResult<T>>> => {
      const { stream, ...rest } = request;
      if (stream === true) {
        return this.stream(structured(rest), rest, (r) => fromResult(r) as StructuredResult<T>);
      }
      return (async () =>
        fromResult(await this.call(structured(rest), rest)) as StructuredResult<T>)();
    };
    this.llm = {
      complete: async (request) =>
        textOf(await this.call(completeJob(request.id ?? newJobId(), request), request)),
      stream: (request) =>
        this.stream(completeJob(request.id ?? newJobId(), request), request, textOf),
      completeStructured: completeStructured as QuarryClient['llm']['completeStructured'],
    };
  }

  /** Connects, checks that the fleet's topology exists, and opens a private reply queue. */
  static async connect(url: string, options: ClientOptions = {}): Promise<QuarryClient> {
    const client = new QuarryClient(url, options);
    const reconnect = options.reconnect ?? {};
    const connection = await amqp.connect(url, {
      clientProperties: { connection_name: options.connectionName ?? 'quarry-producer-ts' },
      recovery: {
        waitForConnect: false,
        initialMaxRetries: 0,
        maxRetries: reconnect.maxRetries ?? Infinity,
        initialDelay: 100,
        maxDelay: reconnect.maxDelayMs ?? 5_000,
        setup: (model: amqp.ChannelModel) => client.setUp(model),
      },
    });
    client.connection = connection;
    connection.on('error', noop);
    connection.on('connect-failed', noop);
    connection.on('disconnect', () => client.lose());
    connection.on('reconnect-failed', (error: Error) => client.fail(error));
    try {
      await connection.waitForConnect();
    } catch (error) {
      // A connection whose setup failed (the fleet's topology missing) is closed, not left open.
      await connection.close().catch(noop);
      if (error instanceof QuarryError) throw error;
      throw transport(
        'CONNECTION_LOST',
        `cannot connect to the broker: ${String(error)}`,
        undefined,
        error,
      );
    }
    return client;
  }

  /** After each (re)connection: the publishing channel, the reply queue, then everything in
   * progress published again. */
  private async setUp(model: amqp.ChannelModel): Promise<void> {
    model.on('error', noop);
    const probe = await model.createChannel();
    probe.on('error', noop);
    try {
      await probe.checkExchange(this.topology.jobsExchange);
    } catch {
      throw new QuarryError({
        code: 'TOPOLOGY_MISSING',
        message: `the exchange ${this.topology.jobsExchange} does not exist: is a worker of namespace \`${this.topology.namespace}\` running?`,
        source: 'transport',
        retryable: true,
      });
    }
    await probe.close().catch(noop);
    const publish = await model.createConfirmChannel();
    publish.on('error', noop);
    publish.on('return', (message: amqp.Message) => {
      const id = message.properties.messageId as string | undefined;
      if (id !== undefined) this.returned.add(id);
    });
    const replies = await model.createChannel();
    replies.on('error', noop);
    const replyQueue = this.topology.privateReplyQueue(this.user, randomBytes(16).toString('hex'));
    await replies.assertQueue(replyQueue, { exclusive: true, autoDelete: true, durable: false });
    await replies.bindQueue(replyQueue, this.topology.resultsExchange, replyQueue);
    // Without acks: the queue is this connection's own (exclusive, deleted with it), so an
    // ack would keep nothing safer, and it would double the broker's work per reply.
    await replies.consume(
      replyQueue,
      (message) => {
        if (message !== null) this.route(message);
      },
      { noAck: true },
    );
    const session: Session = { id: ++this.sessions, model, publish, replyQueue };
    this.session = session;
    for (const resume of this.waiting.splice(0)) resume(session);
    // What was in progress on the lost connection goes out again on this one.
    for (const [jobId, call] of this.calls) {
      if (call.session !== session.id) void this.publishCall(jobId, call).catch(noop);
    }
    for (const [correlationId, control] of this.controls) {
      if (control.session !== session.id)
        void this.publishControl(correlationId, control).catch(noop);
    }
    for (const batch of this.batches) void batch.reattach(session).catch(noop);
  }

  private lose(): void {
    this.session = undefined;
  }

  private fail(error: Error): void {
    this.session = undefined;
    const failure = transport(
      'CONNECTION_LOST',
      `the broker connection is lost for good: ${error.message}`,
    );
    for (const resume of this.waiting.splice(0)) resume(undefined);
    for (const [jobId, call] of this.calls) {
      this.calls.delete(jobId);
      call.reject(failure);
    }
    for (const batch of this.batches) batch.fail(failure);
  }

  /** The current session, waiting for a reconnection at most until `deadline`. */
  async ready(deadline: number): Promise<Session> {
    if (this.closed) throw transport('CLOSED', 'the client is closed');
    if (this.session !== undefined) return this.session;
    const session = await new Promise<Session | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(undefined), Math.max(0, deadline - Date.now()));
      this.waiting.push((s) => {
        clearTimeout(timer);
        resolve(s);
      });
    });
    if (session === undefined) {
      throw transport(
        'CONNECTION_LOST',
        'the broker connection is lost and did not come back in time',
      );
    }
    return session;
  }

  /** Publishes with `mandatory` and waits for the broker's confirm. */
  async publishOn(
    session: Session,
    exchange: string,
    routingKey: string,
    body: Buffer,
    options: amqp.Options.Publish,
  ): Promise<void> {
    const id = options.messageId ?? options.correlationId ?? '';
    await new Promise<void>((resolve, reject) => {
      let written: boolean;
      try {
        written = session.publish.publish(
          exchange,
          routingKey,
          body,
          {
            ...options,
            mandatory: true,
            persistent: true,
            contentType: CONTENT_TYPE_JSON,
            userId: this.user,
          },
          (error: unknown) => {
            if (error != null) {
              // amqplib: `message nacked` from the broker; anything else is the channel
              // closing under the publish.
              const nacked = error instanceof Error && error.message.includes('nacked');
              reject(
                nacked
                  ? transport('NACKED', `the broker did not take message ${id}`, id)
                  : transport(
                      'CONNECTION_LOST',
                      `the connection was lost before message ${id} was confirmed`,
                      id,
                    ),
              );
            } else if (this.returned.delete(id)) {
              reject(
                transport(
                  'UNROUTABLE',
                  `no queue took message ${id} (exchange ${exchange}, key ${routingKey})`,
                  id,
                ),
              );
            } else {
              resolve();
            }
          },
        );
      } catch (error) {
        reject(transport('CONNECTION_LOST', `cannot publish: ${String(error)}`, id, error));
        return;
      }
      // amqplib buffers what the socket does not take; a full buffer is waited out.
      if (!written) session.publish.once('drain', noop);
    });
  }

  /** A job, with its AMQP properties as the contract says. */
  jobProperties(job: JobV1, replyTo: string): amqp.Options.Publish {
    return {
      messageId: job.id,
      correlationId: job.id,
      replyTo,
      type: MESSAGE_TYPE_JOB,
      headers: { [HEADER_PUBLISHED_MS]: Date.now(), [HEADER_TRACEPARENT]: newTraceparent() },
    };
  }

  private async publishCall(jobId: string, call: PendingCall): Promise<void> {
    const session = await this.ready((call.job.deadline_ms as number | undefined) ?? Date.now());
    call.session = session.id;
    try {
      await this.publishOn(
        session,
        this.topology.jobsExchange,
        call.lane,
        encodeJob(call.job),
        this.jobProperties(call.job, session.replyQueue),
      );
    } catch (error) {
      // Lost before the confirm: the next session publishes it again (its setup does, for
      // every call last published on another session).
      if (
        error instanceof QuarryError &&
        error.code === 'CONNECTION_LOST' &&
        this.calls.has(jobId)
      ) {
        return;
      }
      throw error;
    }
  }

  /** @internal Publishes one job with `stream: true` and yields its events ([`streamed`]):
   * `llm.stream` and `completeStructured({stream: true})` call it. */
  stream<R>(
    job: JobV1,
    options: CallOptions,
    finish: (result: ResultV1) => R,
  ): AsyncIterable<StreamEvent<R>> {
    job.stream = true;
    return streamed(
      (onChunk, signal) => this.call(job, { ...options, signal }, onChunk),
      finish,
      options.signal,
    );
  }

  /** Publishes one job and waits for its result (the job's deadline is the call's timeout);
   * a streamed call's chunks go to `onChunk` meanwhile. */
  async call(
    job: JobV1,
    options: CallOptions,
    onChunk?: (chunk: ChunkV1) => void,
  ): Promise<ResultV1> {
    const timeoutMs = timeoutOf(options);
    const lane = laneOf(options, 'interactive');
    const signal = options.signal;
    if (signal?.aborted) throw aborted(job.id);
    if (this.calls.has(job.id)) throw invalidArgument('id', `job ${job.id} is already pending`);
    job.deadline_ms ??= Date.now() + timeoutMs;
    return await new Promise<ResultV1>((resolve, reject) => {
      let published = false;
      const settle = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.calls.delete(job.id);
      };
      const onAbort = (): void => {
        settle();
        reject(aborted(job.id));
        if (published) void this.cancel(job.id, { batchId: job.batch_id ?? undefined }).catch(noop);
      };
      const timer = setTimeout(() => {
        settle();
        reject(
          new QuarryError({
            code: 'CALL_TIMEOUT',
            message: `no result for job ${job.id} within ${timeoutMs} ms (its deadline: the fleet stops working on it)`,
            source: 'client',
            retryable: true,
            jobId: job.id,
          }),
        );
      }, timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      const call: PendingCall = {
        job,
        lane,
        onChunk,
        session: undefined,
        resolve: (result) => {
          settle();
          resolve(result);
        },
        reject: (error) => {
          settle();
          reject(error);
        },
      };
      this.calls.set(job.id, call);
      this.publishCall(job.id, call).then(
        () => {
          published = true;
          // Aborted while the publish was under way: its job is cancelled now.
          if (!this.calls.has(job.id) && signal?.aborted) void this.cancel(job.id).catch(noop);
        },
        (error: unknown) => {
          if (this.calls.get(job.id) === call) call.reject(asQuarry(error, job.id));
        },
      );
    });
  }

  /** Routes one reply: only from the worker user, only for a call or request pending. */
  private route(message: amqp.ConsumeMessage): void {
    if (message.properties.userId !== this.workerUser) {
      this.foreign++;
      return;
    }
    let body: unknown;
    try {
      body = JSON.parse(message.content.toString('utf8'));
    } catch {
      this.foreign++;
      return;
    }
    if (message.properties.type === MESSAGE_TYPE_CONTROL) {
      const id = message.properties.correlationId as string | undefined;
      const control = id === undefined ? undefined : this.controls.get(id);
      if (control === undefined) this.foreign++;
      else control.resolve(body as ControlReplyV1);
      return;
    }
    if (message.properties.type === MESSAGE_TYPE_CHUNK) {
      const chunk = body as ChunkV1;
      const call = typeof chunk?.job_id === 'string' ? this.calls.get(chunk.job_id) : undefined;
      if (call?.onChunk === undefined) this.foreign++;
      else call.onChunk(chunk);
      return;
    }
    const result = body as ResultV1;
    const call = typeof result?.job_id === 'string' ? this.calls.get(result.job_id) : undefined;
    if (call === undefined) this.foreign++;
    else call.resolve(result);
  }

  private async publishControl(correlationId: string, control: PendingControl): Promise<void> {
    const session = await this.ready(Date.now() + 30_000);
    control.session = session.id;
    await this.publishOn(
      session,
      this.topology.controlExchange,
      '',
      Buffer.from(JSON.stringify(control.request)),
      {
        correlationId,
        replyTo: session.replyQueue,
        type: MESSAGE_TYPE_CONTROL,
      },
    );
  }

  /** Sends a control request and waits for its reply; a refusal is a `QuarryError`. */
  async control(request: ControlV1, options: CallOptions = {}): Promise<ControlReplyV1> {
    const timeoutMs = timeoutOf({ timeoutMs: options.timeoutMs ?? 10_000 });
    const correlationId = `control-${newJobId()}`;
    const reply = await new Promise<ControlReplyV1>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.controls.delete(correlationId);
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new QuarryError({
            code: 'CALL_TIMEOUT',
            message: `no answer to ${request.action} within ${timeoutMs} ms: is a worker running?`,
            source: 'client',
            retryable: true,
          }),
        );
      }, timeoutMs);
      const control: PendingControl = {
        request,
        session: undefined,
        resolve: (r) => {
          done();
          resolve(r);
        },
      };
      this.controls.set(correlationId, control);
      this.publishControl(correlationId, control).catch((error: unknown) => {
        done();
        reject(asQuarry(error));
      });
    });
    if (reply.status !== 'ok') {
      throw new QuarryError({
        code: reply.error?.code ?? 'INTERNAL',
        message: reply.error?.message ?? `${request.action} refused without a reason`,
        source: 'refused',
        retryable: reply.error?.retryable ?? false,
        details: (reply.error?.details ?? undefined) as Record<string, unknown> | undefined,
      });
    }
    return reply;
  }

  /** What this plugin may use: aliases and targets, defaults, profiles, quotas left. */
  async describe(options: CallOptions = {}): Promise<Description> {
    const reply = await this.control({ version: 'control.v1', action: 'describe' }, options);
    if (reply.description == null) {
      throw transport('PROTOCOL', 'a describe reply without its description');
    }
    return reply.description;
  }

  /** Cancels one job of this plugin: not started → `CANCELLED` without a call; in flight →
   * its provider call dropped. */
  async cancel(
    jobId: string,
    options: CallOptions & { batchId?: string | undefined } = {},
  ): Promise<void> {
    if (typeof jobId !== 'string' || jobId.length < 1 || jobId.length > 128) {
      throw invalidArgument('jobId', 'must be 1 to 128 characters');
    }
    const request: ControlV1 = { version: 'control.v1', action: 'cancel_job', job_id: jobId };
    if (options.batchId !== undefined) request.batch_id = options.batchId;
    await this.control(request, options);
  }

  /** Image-first extraction on an explicit provider and model. */
  async extractStructuredWithModel<S extends JsonSchemaLike, T = StaticOf<S>>(
    request: StructuredRequest<S> & { provider: string; model: string },
  ): Promise<StructuredResult<T>> {
    if (typeof request.provider !== 'string' || request.provider === '') {
      throw invalidArgument('provider', 'is required');
    }
    if (typeof request.model !== 'string' || request.model === '') {
      throw invalidArgument('model', 'is required');
    }
    if (!Array.isArray(request.input) || !request.input.some((part) => part?.type === 'image')) {
      throw invalidArgument('input', 'needs at least one image part');
    }
    return this.llm.completeStructured<S, T>(request);
  }

  /** A batch of this plugin, by its id: submit, resume, status, cancel. */
  batch(id: string, options: BatchOptions = {}): Batch {
    return new Batch(this, id, options);
  }

  /** @internal A batch in progress, re-attached after a reconnection. */
  track(batch: Batch, on: boolean): void {
    if (on) this.batches.add(batch);
    else this.batches.delete(batch);
  }

  /** @internal The session if connected. */
  get current(): Session | undefined {
    return this.session;
  }

  /** Closes the connection; pending calls fail with `CLOSED`. */
  async close(): Promise<void> {
    this.closed = true;
    const closed = transport('CLOSED', 'the client was closed');
    for (const call of this.calls.values()) call.reject(closed);
    await this.connection?.close().catch(noop);
  }
}

function aborted(jobId: string): QuarryError {
  return new QuarryError({
    code: 'ABORTED',
    message: `the call for job ${jobId} was aborted`,
    source: 'client',
    retryable: false,
    jobId,
  });
}

export function asQuarry(error: unknown, jobId?: string): QuarryError {
  if (error instanceof QuarryError) return error;
  return transport('CONNECTION_LOST', String(error), jobId, error);
}
