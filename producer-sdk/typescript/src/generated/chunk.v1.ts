// Generated from schemas/json/chunk.v1.schema.json by scripts/generate-types.mjs: do not edit.

/**
 * Part of a streamed answer (a job with `stream: true`), published non-persistently to the job's `reply_to` through the `{ns}.results` exchange with the job's `correlation_id`, AMQP `type` `quarry.chunk.v1` and the worker's `user_id`, before the job's `result.v1`. A delta appends its text to what the consumer shows; a reset drops it. The result is authoritative: its text equals the deltas since the last reset, concatenated.
 */
export interface ChunkV1 {
  /**
   * The message version; a reader ignores fields it does not know within it.
   */
  version: 'chunk.v1';
  /**
   * The job's `id`.
   */
  job_id: string;
  /**
   * Position in this delivery's stream, from 0 without gaps; a redelivery of the job starts again at 0 with a reset.
   */
  seq: number;
  /**
   * delta: append `text`; reset: drop everything shown so far, the deltas that follow start the answer again.
   */
  kind: 'delta' | 'reset';
  /**
   * A delta's text: the provider's deltas since the previous chunk, coalesced.
   */
  text?: string;
  /**
   * JSON mode, deltas only: the best-effort parse of the answer so far (an unfinished string, array or object closed where it stops); absent while nothing parses. For display only: the result's `parsed` is the validated value.
   */
  partial?: {
    [k: string]: unknown;
  };
  /**
   * A reset's reason: retry (the attempt failed), repair (the answer was invalid and a repair follows), redelivered (another delivery of the job starts over), rewritten (the worker maps the provider's answer to the job's schema; the final text follows as one delta). A reader treats a word it does not know as a reset all the same.
   */
  reason?: 'retry' | 'repair' | 'redelivered' | 'rewritten';
}
