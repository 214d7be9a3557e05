// Names, properties and encodings of the wire contract (docs/wire-contract.md).

import { createHash, randomBytes } from 'node:crypto';

export const DEFAULT_NAMESPACE = 'quarry';
export const HEADER_PUBLISHED_MS = 'x-quarry-published-ms';
export const HEADER_TRACEPARENT = 'traceparent';
export const MESSAGE_TYPE_JOB = 'quarry.job.v1';
export const MESSAGE_TYPE_RESULT = 'quarry.result.v1';
export const MESSAGE_TYPE_CONTROL = 'quarry.control.v1';
export const MESSAGE_TYPE_CHUNK = 'quarry.chunk.v1';
export const CONTENT_TYPE_JSON = 'application/json';

export type Lane = 'interactive' | 'batch';

/** The fleet's exchange and queue names under one namespace. */
export class Topology {
  constructor(readonly namespace: string = DEFAULT_NAMESPACE) {
    if (!/^[A-Za-z0-9_.-]{1,100}$/.test(namespace) || namespace.startsWith('amq.')) {
      throw new RangeError(
        'namespace: 1 to 100 ASCII letters, digits, `_`, `-` and `.`, not starting with `amq.`',
      );
    }
  }
  get jobsExchange(): string {
    return `${this.namespace}.jobs`;
  }
  get resultsExchange(): string {
    return `${this.namespace}.results`;
  }
  get controlExchange(): string {
    return `${this.namespace}.control`;
  }
  replyPrefix(user: string): string {
    return `${this.namespace}.replies.${user}.`;
  }
  batchReplyQueue(user: string, batchId: string): string {
    return `${this.replyPrefix(user)}${batchId}`;
  }
  privateReplyQueue(user: string, connectionId: string): string {
    return `${this.replyPrefix(user)}rpc-${connectionId}`;
  }
}

/**
 * JSON text with object keys sorted and no spaces: the same schema is the same text whoever
 * writes it, so the workers compile it once (their cache is keyed by the text).
 */
export function canonicalJson(value: unknown): string {
  // Written as text: a JS object would put integer-like keys ("9", "10") first.
  if (Array.isArray(value))
    return `[${value.map((item) => canonicalJson(item ?? null)).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const object = value as Record<string, unknown>;
    const members = Object.keys(object)
      .sort()
      .filter((key) => object[key] !== undefined)
      .map((key) => `${JSON.stringify(key)}:${canonicalJson(object[key])}`);
    return `{${members.join(',')}}`;
  }
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError(`not JSON: ${typeof value}`);
  return text;
}

function uuidText(bytes: Buffer): string {
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** A fresh job id: a UUID v7 (time-ordered, unique), as the Rust SDK makes them. */
export function newJobId(): string {
  const bytes = randomBytes(16);
  const ms = BigInt(Date.now());
  for (let i = 0; i < 6; i++) bytes[i] = Number((ms >> BigInt(8 * (5 - i))) & 0xffn);
  bytes[6] = (bytes[6]! & 0x0f) | 0x70;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  return uuidText(bytes);
}

/**
 * The id of a batch's job named by its `customId`: the same for the same batch and custom id
 * in every process, so a producer that restarts and publishes the job again is not charged
 * twice (workers run a job id once). A UUID v8 from SHA-256.
 */
export function batchJobId(batchId: string, customId: string): string {
  const bytes = createHash('sha256').update(batchId).update('\0').update(customId).digest();
  const id = bytes.subarray(0, 16);
  id[6] = (id[6]! & 0x0f) | 0x80;
  id[8] = (id[8]! & 0x3f) | 0x80;
  return uuidText(Buffer.from(id));
}

/** A W3C `traceparent` of a new root span. */
export function newTraceparent(): string {
  return `00-${randomBytes(16).toString('hex')}-${randomBytes(8).toString('hex')}-01`;
}
