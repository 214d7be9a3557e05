// Generated from schemas/json/result.v1.schema.json by scripts/generate-types.mjs: do not edit.

/**
 * The outcome of one job, published persistently to the job's `reply_to` queue (one of the publishing plugin's own, `{ns}.replies.{user}.*`) through the `{ns}.results` topic exchange, with the job's `correlation_id` and the worker's `user_id`. Every job ends in exactly one result per delivery; at-least-once delivery means a consumer deduplicates on `job_id` (the SDK does).
 */
export type ResultV1 = {
  /**
   * The message version; a reader ignores fields it does not know within it.
   */
  version: 'result.v1';
  /**
   * The job's `id`; for a message that could not be decoded, its AMQP `message_id` or `correlation_id`.
   */
  job_id: string;
  /**
   * The job's custom_id, echoed.
   */
  custom_id?: string | null;
  /**
   * The job's batch_id, echoed.
   */
  batch_id?: string | null;
  /**
   * ok: text (and parsed in JSON mode) hold the answer; error: error says why.
   */
  status: 'ok' | 'error';
  /**
   * The model's answer as text (JSON text in JSON mode).
   */
  text?: string | null;
  /**
   * The answer parsed as JSON and valid against the job's `json_schema`; present only in JSON mode on success.
   */
  parsed?: {
    [k: string]: unknown;
  };
  /**
   * application/json in JSON mode, text/plain otherwise.
   */
  content_type?: 'application/json' | 'text/plain' | null;
  /**
   * The provider name (from config) that answered.
   */
  provider?: string | null;
  /**
   * The provider's model that answered.
   */
  model?: string | null;
  /**
   * Why the last answer the model gave ended, normalised across providers (docs/wire-contract.md): stop, length (cut at max_tokens: the text is incomplete), stop_sequence, content_filter, other. Absent when no answer came back. Readers treat a word they do not know as other.
   */
  finish_reason?: 'stop' | 'length' | 'stop_sequence' | 'content_filter' | 'other' | null;
  /**
   * Tokens summed over every attempt (retries, repairs, fallbacks).
   */
  usage: {
    /**
     * Prompt tokens, including cached ones.
     */
    input_tokens: number;
    /**
     * Prompt tokens read from the provider's prompt cache (a part of input_tokens): OpenAI cached_tokens, Anthropic cache_read_input_tokens, Gemini cachedContentTokenCount.
     */
    cached_input_tokens?: number;
    /**
     * Prompt tokens written to the provider's prompt cache (a part of input_tokens): Anthropic cache_creation_input_tokens; 0 where the provider reports none.
     */
    cache_write_tokens?: number;
    output_tokens: number;
    total_tokens: number;
  };
  /**
   * Cost of every attempt in US dollars, from the worker's price table; absent when the model has no price.
   */
  cost_usd?: number | null;
  /**
   * Time in the worker from decode to result, milliseconds.
   */
  latency_ms: number;
  /**
   * Time from the producer's publish (the x-quarry-published-ms header) to the worker's start, milliseconds, by the two hosts' clocks; absent without that header.
   */
  queue_ms?: number | null;
  /**
   * Provider calls made for this job (0 when it failed before any call).
   */
  attempts: number;
  /**
   * The job's `purpose`, echoed for the audit trail.
   */
  purpose?: string | null;
  /**
   * The job's `agent_id`, echoed for the audit trail.
   */
  agent_id?: string | null;
  /**
   * The job's `metadata`, byte for byte.
   */
  metadata?: {
    [k: string]: unknown;
  };
  /**
   * Why the job failed (status error only): a stable code, a message, whether a retry may help, and details.
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
};
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
