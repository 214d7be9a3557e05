// Generated from schemas/json/job.v1.schema.json by scripts/generate-types.mjs: do not edit.

export type Part =
  | {
      type: 'text';
      text: string;
    }
  | {
      type: 'image';
      mime: 'image/png' | 'image/jpeg' | 'image/webp' | 'image/gif';
      /**
       * The image bytes in standard base64 (RFC 4648 section 4: the + / alphabet, padded with =), without line breaks or a data: URL prefix. URL-safe or unpadded forms are INVALID_REQUEST.
       */
      data: string;
    };

/**
 * One structured-extraction job, published by a plugin to the exchange `quarry.jobs` with routing key = lane (`interactive` or `batch`). AMQP properties carry the reply address: `reply_to` (queue for the result), `correlation_id` (copied onto the result; the SDK uses the job id), `message_id` (the job id), `user_id` (the plugin's broker user), `delivery_mode` 2 (persistent).
 */
export interface JobV1 {
  /**
   * Wire version of this message.
   */
  version: 'job.v1';
  /**
   * Unique job id chosen by the producer (the SDK uses a UUID v7). Idempotency and deduplication key.
   */
  id: string;
  /**
   * The plugin's own id for this item (a row id, a line number); echoed on the result.
   */
  custom_id?: string | null;
  /**
   * Groups jobs submitted together; echoed on the result.
   */
  batch_id?: string | null;
  /**
   * System instructions for the model: what to extract and how.
   */
  instructions?: string | null;
  /**
   * The content to extract from, in order.
   *
   * @minItems 1
   */
  input: [Part, ...Part[]];
  /**
   * JSON Schema (draft 2020-12 unless `$schema` says otherwise) the answer must satisfy. When present the job runs in JSON mode: the result carries `parsed`. External `$ref`s are not resolved.
   */
  json_schema?: {} | null;
  /**
   * Stream the answer: `chunk.v1` messages (text deltas; in JSON mode also the best-effort parse of the partial answer) go to `reply_to` before the final `result.v1`, which is unchanged and authoritative. Not with `batch_id` (INVALID_REQUEST).
   */
  stream?: boolean | null;
  /**
   * JSON mode without a schema: true asks for any JSON object, parsed and returned in `parsed` (the repair loop included). Implied by `json_schema`; false together with `json_schema` is INVALID_REQUEST.
   */
  json_mode?: boolean | null;
  /**
   * Name of the schema, passed to providers that want one (with `.` as `_` where a provider allows only letters, digits, `_` and `-`). Defaults to `extraction`.
   */
  schema_name?: string | null;
  /**
   * What to run the job on: a model alias from the worker configuration (e.g. `default`, `fast`), or a `provider/model` target (`openai/gpt-4.1-mini`), optionally followed by `@profile` to ask for a credential profile (`fast@premium`). Absent: the plugin's default alias. Naming another alias needs the plugin's `model_override`; naming a target also needs it listed, exactly, in the plugin's `allowed_models`. With `provider` set: the provider's model id as it is, without an `@profile` suffix.
   */
  model?: string | null;
  /**
   * A configured provider to call `model` on directly (for model ids containing `@`); requires `model`, and the same grants as a `provider/model` target.
   */
  provider?: string | null;
  /**
   * Credential profile: which of the provider's keys serve the job. The plugin's policy must allow it (NOT_AUTHORIZED otherwise). When `model` also carries `@profile`, the two must agree (INVALID_REQUEST otherwise).
   */
  profile?: string | null;
  /**
   * Output bound. Absent: the provider's default_max_tokens, else the fleet's worker.default_max_tokens (1024), within the plugin's max_tokens ceiling; some bound is always sent.
   */
  max_tokens?: number | null;
  /**
   * How much the model reasons before answering, mapped to each provider's control: OpenAI and compatible `reasoning_effort` (off: `minimal`), Anthropic `thinking` (off: disabled; low/medium/high: a budget of 1024/4096/16384 tokens below max_tokens), Gemini `thinkingConfig.thinkingBudget` (0/1024/8192/24576). Absent: the model's default.
   */
  reasoning?: 'off' | 'low' | 'medium' | 'high' | null;
  /**
   * Sampling temperature, 0 to 2; absent: the provider's default.
   */
  temperature?: number | null;
  /**
   * Up to 4 non-empty stop sequences.
   *
   * @maxItems 4
   */
  stop?:
    | []
    | [string]
    | [string, string]
    | [string, string, string]
    | [string, string, string, string]
    | null;
  /**
   * Timeout of one provider attempt, in milliseconds (at least 1000: providers bill attempts that are cut short).
   */
  timeout_ms?: number | null;
  /**
   * Absolute deadline, Unix epoch milliseconds. A job not finished by then ends DEADLINE_EXCEEDED.
   */
  deadline_ms?: number | null;
  /**
   * What the extraction is for (e.g. `expense-report`); used in logs.
   */
  purpose?: string | null;
  /**
   * The agent the plugin runs the job for. Needs the plugin's `agent_id_override` (NOT_AUTHORIZED otherwise). In the job's span and log lines and echoed on the result; never a metric label.
   */
  agent_id?: string | null;
  /**
   * Opaque value echoed back on the result unchanged; at most 16384 bytes as compact JSON (workers check it; a JSON Schema cannot count bytes).
   */
  metadata?: {
    [k: string]: unknown;
  };
}
