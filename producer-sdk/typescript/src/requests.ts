// The platform's call shapes (camelCase) and their mapping to `job.v1`, checked before
// anything is published.

import { Ajv2020 } from 'ajv/dist/2020.js';
import { JOB_V1_SCHEMA } from './generated/job-schema.js';
import type { JobV1, Part } from './generated/job.v1.js';
import type { ResultV1 } from './generated/result.v1.js';
import { QuarryError, invalidArgument } from './errors.js';
import { canonicalJson, type Lane } from './wire.js';

export type Reasoning = 'off' | 'low' | 'medium' | 'high';
export type ImageMime = 'image/png' | 'image/jpeg' | 'image/webp' | 'image/gif';
const IMAGE_MIMES: readonly string[] = ['image/png', 'image/jpeg', 'image/webp', 'image/gif'];

/** What every call takes. */
export interface CallOptions {
  /** Milliseconds to wait for the result (default 30 000); also the job's deadline. */
  timeoutMs?: number;
  /** Aborts the call; a job already published is cancelled (`cancel_job`). */
  signal?: AbortSignal;
  /** Lane (default `interactive`). */
  lane?: Lane;
}

/** Fields every job may carry. */
export interface JobOptions {
  /** The job id (default: a fresh UUID v7): the fleet runs one id once. */
  id?: string;
  /** Your own id for the item, echoed on its result. */
  customId?: string;
  /** A model alias, `provider/model`, either with `@profile`; absent: the plugin's default. */
  model?: string;
  /** A provider to call `model` on directly (model ids with `@`). */
  provider?: string;
  /** Credential profile. */
  profile?: string;
  maxTokens?: number;
  temperature?: number;
  stopSequences?: string[];
  reasoning?: Reasoning;
  /** What the job is for (its span, log lines and result; never a metric label). */
  purpose?: string;
  /** The agent the job runs for (needs the plugin's `agent_id_override`). */
  agentId?: string;
  /** Echoed on the result. */
  metadata?: unknown;
  /** Timeout of one provider attempt, milliseconds (1000 to 3 600 000). */
  attemptTimeoutMs?: number;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** `client.llm.complete`: text in, text out. */
export interface CompleteRequest extends JobOptions, CallOptions {
  /** The conversation; or `prompt` for one user message. */
  messages?: ChatMessage[];
  prompt?: string;
  systemPrompt?: string;
}

export type InputPart =
  | { type: 'text'; text: string }
  | {
      type: 'image';
      /** The image bytes; or `data`, already standard base64. */
      buffer?: Uint8Array;
      data?: string;
      mime: ImageMime;
      /** For your own bookkeeping; not sent (the contract has no file names). */
      fileName?: string;
    };

/** A JSON Schema object, or a TypeBox schema (whose static type becomes `parsed`'s). */
export type JsonSchemaLike = object;
/** The static type of a TypeBox schema, `unknown` for a plain JSON Schema. */
export type StaticOf<S> = S extends { static: infer T } ? T : unknown;

/** `client.llm.completeStructured`: instructions and parts in, a typed object out. */
export interface StructuredRequest<S extends JsonSchemaLike = JsonSchemaLike>
  extends JobOptions, CallOptions {
  instructions?: string;
  input: InputPart[];
  /** The answer's schema; absent with `jsonMode: true`: any JSON object. Build it once and do
   * not change it: it is written for the wire once per object, and the fleet compiles it once. */
  jsonSchema?: S;
  schemaName?: string;
  jsonMode?: boolean;
}

export interface Usage {
  inputTokens: number;
  outputTokens: number;
  /** Read from the provider's prompt cache. */
  cacheReadTokens: number;
  /** Written to it (Anthropic reports these). */
  cacheWriteTokens: number;
  totalTokens: number;
  /** From the fleet's price table; undefined when the model has no price. */
  costUsd: number | undefined;
}

/** What every successful call returns. */
export interface CallResult {
  text: string;
  provider: string;
  model: string;
  /** Why the answer ended: `stop`, `length`, `stop_sequence`, `content_filter`, `other`. */
  stopReason: string | undefined;
  usage: Usage;
  /** Time in the worker. */
  latencyMs: number;
  /** Time from publish to the worker's start. */
  queueMs: number | undefined;
  attempts: number;
  jobId: string;
}

export interface StructuredResult<T = unknown> extends CallResult {
  parsed: T;
  contentType: 'application/json' | 'text/plain';
}

const DEFAULT_TIMEOUT_MS = 30_000;
const MAX_TIMEOUT_MS = 24 * 3_600_000;

export function timeoutOf(call: CallOptions): number {
  const ms = call.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isInteger(ms) || ms < 1 || ms > MAX_TIMEOUT_MS) {
    throw invalidArgument('timeoutMs', `must be an integer from 1 to ${MAX_TIMEOUT_MS}`);
  }
  return ms;
}

export function laneOf(call: CallOptions, fallback: Lane): Lane {
  const lane = call.lane ?? fallback;
  if (lane !== 'interactive' && lane !== 'batch') {
    throw invalidArgument('lane', 'must be `interactive` or `batch`');
  }
  return lane;
}

function common(options: JobOptions): Partial<JobV1> {
  const job: Partial<JobV1> = {};
  if (options.customId !== undefined) job.custom_id = options.customId;
  if (options.model !== undefined) job.model = options.model;
  if (options.provider !== undefined) job.provider = options.provider;
  if (options.profile !== undefined) job.profile = options.profile;
  if (options.maxTokens !== undefined) job.max_tokens = options.maxTokens;
  if (options.temperature !== undefined) job.temperature = options.temperature;
  if (options.stopSequences !== undefined) job.stop = options.stopSequences as JobV1['stop'];
  if (options.reasoning !== undefined) job.reasoning = options.reasoning;
  if (options.purpose !== undefined) job.purpose = options.purpose;
  if (options.agentId !== undefined) job.agent_id = options.agentId;
  if (options.attemptTimeoutMs !== undefined) job.timeout_ms = options.attemptTimeoutMs;
  if (options.metadata !== undefined) job.metadata = options.metadata as JobV1['metadata'];
  return job;
}

/** A completion as a job: system prompt and system messages become the instructions, the
 * turns become text parts (one user message: its text; several turns: `User:`/`Assistant:`). */
export function completeJob(id: string, request: CompleteRequest): JobV1 {
  if (request.messages !== undefined && request.prompt !== undefined) {
    throw invalidArgument('prompt', 'give `messages` or `prompt`, not both');
  }
  const messages: ChatMessage[] =
    request.messages ??
    (request.prompt !== undefined ? [{ role: 'user', content: request.prompt }] : []);
  if (!Array.isArray(messages)) throw invalidArgument('messages', 'must be an array');
  const system: string[] = [];
  if (request.systemPrompt !== undefined) {
    if (typeof request.systemPrompt !== 'string') {
      throw invalidArgument('systemPrompt', 'must be a string');
    }
    system.push(request.systemPrompt);
  }
  const turns: ChatMessage[] = [];
  messages.forEach((message, i) => {
    if (message === null || typeof message !== 'object' || typeof message.content !== 'string') {
      throw invalidArgument(`messages[${i}].content`, 'must be a string');
    }
    if (message.role === 'system') system.push(message.content);
    else if (message.role === 'user' || message.role === 'assistant') turns.push(message);
    else throw invalidArgument(`messages[${i}].role`, 'must be `system`, `user` or `assistant`');
  });
  if (turns.length === 0) {
    throw invalidArgument('messages', 'needs at least one user message (or a `prompt`)');
  }
  const single = turns.length === 1 && turns[0]!.role === 'user';
  const input = turns.map((turn): Part => ({
    type: 'text',
    text: single ? turn.content : `${turn.role === 'user' ? 'User' : 'Assistant'}: ${turn.content}`,
  })) as JobV1['input'];
  const job: JobV1 = { version: 'job.v1', id, input, ...common(request) };
  if (system.length > 0) job.instructions = system.join('\n\n');
  return checked(job);
}

/** A structured call as a job. */
export function structuredJob(id: string, request: StructuredRequest): JobV1 {
  if (!Array.isArray(request.input)) throw invalidArgument('input', 'must be an array of parts');
  const input = request.input.map((part, i): Part => {
    if (part === null || typeof part !== 'object') {
      throw invalidArgument(`input[${i}]`, 'must be a text or image part');
    }
    if (part.type === 'text') {
      if (typeof part.text !== 'string')
        throw invalidArgument(`input[${i}].text`, 'must be a string');
      return { type: 'text', text: part.text };
    }
    if (part.type === 'image') {
      if (!IMAGE_MIMES.includes(part.mime)) {
        throw invalidArgument(`input[${i}].mime`, `must be one of ${IMAGE_MIMES.join(', ')}`);
      }
      if ((part.buffer === undefined) === (part.data === undefined)) {
        throw invalidArgument(
          `input[${i}]`,
          'an image has `buffer` (bytes) or `data` (base64), one of them',
        );
      }
      if (part.buffer !== undefined && !(part.buffer instanceof Uint8Array)) {
        throw invalidArgument(`input[${i}].buffer`, 'must be a Buffer or Uint8Array');
      }
      const data =
        part.buffer !== undefined ? Buffer.from(part.buffer).toString('base64') : part.data!;
      return { type: 'image', mime: part.mime, data };
    }
    throw invalidArgument(`input[${i}].type`, 'must be `text` or `image`');
  }) as JobV1['input'];
  const job: JobV1 = { version: 'job.v1', id, input, ...common(request) };
  if (request.instructions !== undefined) job.instructions = request.instructions;
  if (request.schemaName !== undefined) job.schema_name = request.schemaName;
  if (request.jsonMode !== undefined) job.json_mode = request.jsonMode;
  if (request.jsonSchema !== undefined) {
    if (
      request.jsonSchema === null ||
      typeof request.jsonSchema !== 'object' ||
      Array.isArray(request.jsonSchema)
    ) {
      throw invalidArgument('jsonSchema', 'must be a JSON Schema object');
    }
    // Sorted and compact, so that the fleet compiles one schema once whoever sends it. The
    // text is kept as written: a JS object would put integer-like keys first.
    // Written once per schema object: a batch's jobs share theirs.
    let written = WRITTEN.get(request.jsonSchema);
    if (written === undefined) {
      const text = canonicalJson(request.jsonSchema);
      written = { text, value: JSON.parse(text) as Record<string, unknown> };
      WRITTEN.set(request.jsonSchema, written);
    }
    job.json_schema = written.value;
    SCHEMA_TEXT.set(job, written.text);
  }
  return checked(job);
}

/** A schema object as written for the wire, by the caller's object (treated as read-only). */
const WRITTEN = new WeakMap<object, { text: string; value: Record<string, unknown> }>();

/** The schema text of a job built here, by job. */
const SCHEMA_TEXT = new WeakMap<JobV1, string>();

/** The job's message body, its schema written as `canonicalJson` wrote it. */
export function encodeJob(job: JobV1): Buffer {
  const text = SCHEMA_TEXT.get(job);
  if (text === undefined || job.json_schema == null) return Buffer.from(JSON.stringify(job));
  const { json_schema: _schema, ...rest } = job;
  const body = JSON.stringify(rest);
  return Buffer.from(`${body.slice(0, -1)},"json_schema":${text}}`);
}

const FIELD_NAMES: Record<string, string> = {
  custom_id: 'customId',
  batch_id: 'batchId',
  json_schema: 'jsonSchema',
  json_mode: 'jsonMode',
  schema_name: 'schemaName',
  max_tokens: 'maxTokens',
  stop: 'stopSequences',
  timeout_ms: 'attemptTimeoutMs',
  deadline_ms: 'timeoutMs',
  agent_id: 'agentId',
};

const validate = new Ajv2020({ allErrors: true, strict: false }).compile(JOB_V1_SCHEMA);

/** The API's name of a job field at a JSON pointer: `/input/0/data` → `input[0].data`. */
function fieldAt(pointer: string): string {
  const parts = pointer.split('/').filter((p) => p !== '');
  return (
    parts
      .map((part, i) =>
        /^\d+$/.test(part) ? `[${part}]` : `${i > 0 ? '.' : ''}${FIELD_NAMES[part] ?? part}`,
      )
      .join('') || 'job'
  );
}

const MAX_METADATA_BYTES = 16_384;

/** The job against `job.v1` and the rules the schema cannot say; the field at fault named. */
export function checked(job: JobV1): JobV1 {
  if (!validate(job)) {
    // Under a `oneOf` (text or image part) every branch reports: the deepest error that is
    // not a branch's mismatch (its `type` constant, its fields) is the one at fault.
    const branchy = new Set(['const', 'oneOf', 'anyOf', 'required', 'additionalProperties']);
    const rank = (e: { instancePath: string; keyword: string }): number =>
      e.instancePath.split('/').length * 2 + (branchy.has(e.keyword) ? 0 : 1);
    const error = [...(validate.errors ?? [])].sort((a, b) => rank(b) - rank(a))[0];
    const field = fieldAt(error?.instancePath ?? '');
    const reason =
      error?.keyword === 'pattern' && field.endsWith('.data')
        ? 'is not standard base64 (RFC 4648 `+` `/` alphabet, padded with `=`)'
        : (error?.message ?? 'breaks the contract');
    throw invalidArgument(field, reason);
  }
  if (job.json_mode === false && job.json_schema != null) {
    throw invalidArgument('jsonMode', '`false` with a `jsonSchema` (a schema implies JSON mode)');
  }
  if (job.metadata !== undefined) {
    const text = JSON.stringify(job.metadata);
    if (text === undefined) throw invalidArgument('metadata', 'must be JSON');
    if (Buffer.byteLength(text) > MAX_METADATA_BYTES) {
      throw invalidArgument('metadata', `is more than ${MAX_METADATA_BYTES} bytes as JSON`);
    }
  }
  if (job.provider != null && job.model == null) {
    throw invalidArgument('provider', 'needs `model`');
  }
  const at = job.model?.indexOf('@') ?? -1;
  if (
    job.provider == null &&
    at >= 0 &&
    job.profile != null &&
    job.model!.slice(at + 1) !== job.profile
  ) {
    throw invalidArgument('profile', 'differs from the `@profile` in `model`');
  }
  return job;
}

/** The caller's view of a result: a typed error for a failed job. */
export function fromResult(result: ResultV1): CallResult & {
  parsed: unknown;
  contentType: 'application/json' | 'text/plain';
} {
  if (result.status !== 'ok') {
    const error = result.error;
    throw new QuarryError({
      code: error?.code ?? 'INTERNAL',
      message: error?.message ?? 'the job failed without an error',
      source: 'job',
      retryable: error?.retryable ?? false,
      details: (error?.details ?? undefined) as Record<string, unknown> | undefined,
      jobId: result.job_id,
    });
  }
  const usage = result.usage;
  return {
    text: result.text ?? '',
    parsed: result.parsed,
    contentType: result.content_type ?? 'text/plain',
    provider: result.provider ?? '',
    model: result.model ?? '',
    stopReason: result.finish_reason ?? undefined,
    usage: {
      inputTokens: usage.input_tokens,
      outputTokens: usage.output_tokens,
      cacheReadTokens: usage.cached_input_tokens ?? 0,
      cacheWriteTokens: usage.cache_write_tokens ?? 0,
      totalTokens: usage.total_tokens,
      costUsd: result.cost_usd ?? undefined,
    },
    latencyMs: result.latency_ms,
    queueMs: result.queue_ms ?? undefined,
    attempts: result.attempts,
    jobId: result.job_id,
  };
}
