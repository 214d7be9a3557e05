// Generated from schemas/json/control-reply.v1.schema.json by scripts/generate-types.mjs: do not edit.

export type ErrorCode =
  | 'INVALID_REQUEST'
  | 'NOT_AUTHORIZED'
  | 'MODEL_UNRESOLVED'
  | 'MODEL_UNAVAILABLE'
  | 'RATE_LIMITED'
  | 'CREDENTIALS_EXHAUSTED'
  | 'AUTH_FAILED'
  | 'TIMEOUT'
  | 'DEADLINE_EXCEEDED'
  | 'OUTPUT_INVALID'
  | 'PROVIDER_ERROR'
  | 'CANCELLED'
  | 'BUDGET_EXCEEDED'
  | 'INTERNAL';

/**
 * A worker's answer to a control.v1 request, published to its `reply_to` with its `correlation_id` and `type` `quarry.control.v1`. `ok` means the request is applied fleet-wide: for `cancel_batch`, no job of the batch starts after the reply was published.
 */
export interface ControlReplyV1 {
  /**
   * The message version; a reader ignores fields it does not know within it.
   */
  version: 'control.v1';
  /**
   * The action of the request this answers.
   */
  action: 'cancel_batch' | 'batch_status' | 'describe' | 'cancel_job';
  /**
   * The batch of a batch action.
   */
  batch_id?: string;
  /**
   * ok: applied (or answered); error: error says why.
   */
  status: 'ok' | 'error';
  /**
   * Why the request failed (status error only).
   */
  error?: {
    code: ErrorCode;
    message: string;
    /**
     * Whether submitting the same job again may succeed.
     */
    retryable: boolean;
    /**
     * Structured detail (e.g. validation errors with their paths).
     */
    details?: {
      [k: string]: unknown;
    };
  } | null;
  /**
   * `batch_status`: results stored so far by outcome (`ok` or an error code) and `tokens`. A job run twice in a worker's crash window counts twice.
   */
  progress?: {
    [k: string]: number;
  } | null;
  /**
   * `batch_status`: what the stored results cost in US dollars (summed to the nanodollar), from the workers' price table; absent when none had a price.
   */
  cost_usd?: number | null;
  /**
   * `describe`: the caller's own view of the fleet: what it may run on, its defaults, profiles and quotas with what is left of them, and the contract and capabilities of the fleet's workers.
   */
  description?: {
    /**
     * Message versions the fleet speaks (job.v1, result.v1, control.v1).
     */
    contract: string[];
    /**
     * Features beyond the first job.v1 (json_mode, targets, agent_id, reasoning, finish_reason, exact_metadata, describe, ...).
     */
    capabilities: string[];
    plugin: string;
    /**
     * The alias a job without `model` runs on.
     */
    default_model: string;
    model_override: boolean;
    /**
     * The aliases the caller may run on, each with the targets it may be dispatched to (primary first).
     */
    aliases: {
      name: string;
      targets: Target[];
    }[];
    /**
     * The provider/model targets a job may name.
     */
    targets: Target[];
    default_profile: string;
    profiles: string[];
    agent_id_override: boolean;
    max_tokens_ceiling: number | null;
    default_max_tokens: number;
    job_budget_ms: number;
    quotas: {
      name: 'requests_per_minute' | 'tokens_per_minute' | 'daily_tokens';
      limit: number;
      remaining?: number | null;
    }[];
  } | null;
  /**
   * The job of cancel_job.
   */
  job_id?: string;
}
export interface Target {
  provider: string;
  model: string;
  images: boolean;
}
