import type { ErrorCode as ContractCode } from './generated/result.v1.js';

/** Every error code of the contract (`docs/wire-contract.md`, "Error codes"). */
export type ContractErrorCode = ContractCode;

/** Every contract code once: a code the schema gains fails to compile until it is here. */
const CODES: Record<ContractErrorCode, true> = {
  INVALID_REQUEST: true,
  NOT_AUTHORIZED: true,
  MODEL_UNRESOLVED: true,
  MODEL_UNAVAILABLE: true,
  RATE_LIMITED: true,
  CREDENTIALS_EXHAUSTED: true,
  AUTH_FAILED: true,
  TIMEOUT: true,
  DEADLINE_EXCEEDED: true,
  OUTPUT_INVALID: true,
  PROVIDER_ERROR: true,
  CANCELLED: true,
  BUDGET_EXCEEDED: true,
  INTERNAL: true,
};

/** The contract's codes, for checks at run time. */
export const CONTRACT_ERROR_CODES = Object.keys(CODES) as readonly ContractErrorCode[];

/**
 * Codes of failures on this side of the wire, never in a result:
 * - `INVALID_ARGUMENT`: a call's arguments break the contract; nothing was published.
 * - `ABORTED`: the caller's `signal` aborted the call (its job is cancelled).
 * - `CALL_TIMEOUT`: no result within `timeoutMs` (the job's deadline too, so it is not worked on after).
 * - `CONNECTION_LOST`, `UNROUTABLE`, `NACKED`, `TOPOLOGY_MISSING`, `CLOSED`, `PROTOCOL`: the broker
 *   connection, a publish the broker did not take, a fleet that is not there, a client that was
 *   closed, a reply that breaks the contract.
 */
export type ClientErrorCode =
  | 'INVALID_ARGUMENT'
  | 'ABORTED'
  | 'CALL_TIMEOUT'
  | 'CONNECTION_LOST'
  | 'UNROUTABLE'
  | 'NACKED'
  | 'TOPOLOGY_MISSING'
  | 'CLOSED'
  | 'PROTOCOL';

/**
 * Where a failure comes from: `job` (the fleet ran the job and it failed: a result with an
 * error), `refused` (the fleet refused a control request), `client` (this side: bad
 * arguments, abort, timeout), `transport` (the broker connection or a publish).
 */
export type ErrorSource = 'job' | 'refused' | 'client' | 'transport';

const TRANSPORT: ReadonlySet<string> = new Set([
  'CONNECTION_LOST',
  'UNROUTABLE',
  'NACKED',
  'TOPOLOGY_MISSING',
  'CLOSED',
  'PROTOCOL',
]);

/** The one error every call of the SDK throws. */
export class QuarryError extends Error {
  override readonly name = 'QuarryError';
  /**
   * A contract code (a job's or a refused request's), a {@link ClientErrorCode}, or the text of
   * a code this SDK does not know yet (a newer fleet), kept as it came.
   */
  readonly code: ContractErrorCode | ClientErrorCode | (string & {});
  /** Whether trying the same call again may succeed. */
  readonly retryable: boolean;
  /** The contract's `details`, or what the SDK knows (the field at fault, the job id). */
  readonly details: Record<string, unknown> | undefined;
  readonly source: ErrorSource;
  /** The job the failure belongs to, when there is one. */
  readonly jobId: string | undefined;

  constructor(options: {
    code: QuarryError['code'];
    message: string;
    source: ErrorSource;
    retryable?: boolean;
    details?: Record<string, unknown> | undefined;
    jobId?: string | undefined;
    cause?: unknown;
  }) {
    super(options.message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = options.code;
    this.source = options.source;
    this.retryable = options.retryable ?? TRANSPORT.has(options.code);
    this.details = options.details;
    this.jobId = options.jobId;
  }

  /** Whether the code is one of the contract's (rather than the SDK's own or unknown). */
  get isContractCode(): boolean {
    return (CONTRACT_ERROR_CODES as readonly string[]).includes(this.code);
  }

  /** Whether the broker connection or a publish failed (as opposed to the job, or the call). */
  get isTransport(): boolean {
    return this.source === 'transport';
  }
}

/** Bad arguments, refused before anything is published. */
export function invalidArgument(field: string, reason: string): QuarryError {
  return new QuarryError({
    code: 'INVALID_ARGUMENT',
    message: `${field}: ${reason}`,
    source: 'client',
    retryable: false,
    details: { field },
  });
}

export function transport(
  code: ClientErrorCode,
  message: string,
  jobId?: string,
  cause?: unknown,
): QuarryError {
  return new QuarryError({ code, message, source: 'transport', jobId, cause });
}
