// Generated from schemas/json/job.v1.schema.json by scripts/generate-types.mjs: do not edit.

export const JOB_V1_SCHEMA = {
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "https://quarry.dev/schemas/job.v1.schema.json",
  "title": "Quarry job (v1)",
  "description": "One structured-extraction job, published by a plugin to the exchange `quarry.jobs` with routing key = lane (`interactive` or `batch`). AMQP properties carry the reply address: `reply_to` (queue for the result), `correlation_id` (copied onto the result; the SDK uses the job id), `message_id` (the job id), `user_id` (the plugin's broker user), `delivery_mode` 2 (persistent).",
  "type": "object",
  "additionalProperties": false,
  "if": {
    "description": "A batch's reply queue carries results only: a batch job cannot stream.",
    "required": [
      "stream"
    ],
    "properties": {
      "stream": {
        "const": true
      }
    }
  },
  "then": {
    "properties": {
      "batch_id": {
        "type": "null"
      }
    }
  },
  "required": [
    "version",
    "id",
    "input"
  ],
  "properties": {
    "version": {
      "const": "job.v1",
      "description": "Wire version of this message."
    },
    "id": {
      "type": "string",
      "minLength": 1,
      "maxLength": 128,
      "description": "Unique job id chosen by the producer (the SDK uses a UUID v7). Idempotency and deduplication key."
    },
    "custom_id": {
      "type": [
        "string",
        "null"
      ],
      "maxLength": 256,
      "description": "The plugin's own id for this item (a row id, a line number); echoed on the result."
    },
    "batch_id": {
      "type": [
        "string",
        "null"
      ],
      "maxLength": 128,
      "description": "Groups jobs submitted together; echoed on the result."
    },
    "instructions": {
      "type": [
        "string",
        "null"
      ],
      "description": "System instructions for the model: what to extract and how."
    },
    "input": {
      "type": "array",
      "minItems": 1,
      "description": "The content to extract from, in order.",
      "items": {
        "$ref": "#/$defs/part"
      }
    },
    "json_schema": {
      "type": [
        "object",
        "null"
      ],
      "description": "JSON Schema (draft 2020-12 unless `$schema` says otherwise) the answer must satisfy. When present the job runs in JSON mode: the result carries `parsed`. External `$ref`s are not resolved."
    },
    "stream": {
      "type": [
        "boolean",
        "null"
      ],
      "description": "Stream the answer: `chunk.v1` messages (text deltas; in JSON mode also the best-effort parse of the partial answer) go to `reply_to` before the final `result.v1`, which is unchanged and authoritative. Not with `batch_id` (INVALID_REQUEST)."
    },
    "json_mode": {
      "type": [
        "boolean",
        "null"
      ],
      "description": "JSON mode without a schema: true asks for any JSON object, parsed and returned in `parsed` (the repair loop included). Implied by `json_schema`; false together with `json_schema` is INVALID_REQUEST."
    },
    "schema_name": {
      "type": [
        "string",
        "null"
      ],
      "pattern": "^[A-Za-z0-9_.-]{1,64}$",
      "description": "Name of the schema, passed to providers that want one (with `.` as `_` where a provider allows only letters, digits, `_` and `-`). Defaults to `extraction`."
    },
    "model": {
      "type": [
        "string",
        "null"
      ],
      "minLength": 1,
      "maxLength": 128,
      "description": "What to run the job on: a model alias from the worker configuration (e.g. `default`, `fast`), or a `provider/model` target (`openai/gpt-4.1-mini`), optionally followed by `@profile` to ask for a credential profile (`fast@premium`). Absent: the plugin's default alias. Naming another alias needs the plugin's `model_override`; naming a target also needs it listed, exactly, in the plugin's `allowed_models`. With `provider` set: the provider's model id as it is, without an `@profile` suffix."
    },
    "provider": {
      "type": [
        "string",
        "null"
      ],
      "minLength": 1,
      "maxLength": 64,
      "description": "A configured provider to call `model` on directly (for model ids containing `@`); requires `model`, and the same grants as a `provider/model` target."
    },
    "profile": {
      "type": [
        "string",
        "null"
      ],
      "pattern": "^[A-Za-z0-9_:-]{1,64}$",
      "description": "Credential profile: which of the provider's keys serve the job. The plugin's policy must allow it (NOT_AUTHORIZED otherwise). When `model` also carries `@profile`, the two must agree (INVALID_REQUEST otherwise)."
    },
    "max_tokens": {
      "description": "Output bound. Absent: the provider's default_max_tokens, else the fleet's worker.default_max_tokens (1024), within the plugin's max_tokens ceiling; some bound is always sent.",
      "type": [
        "integer",
        "null"
      ],
      "minimum": 1,
      "maximum": 1000000
    },
    "reasoning": {
      "type": [
        "string",
        "null"
      ],
      "enum": [
        "off",
        "low",
        "medium",
        "high",
        null
      ],
      "description": "How much the model reasons before answering, mapped to each provider's control: OpenAI and compatible `reasoning_effort` (off: `minimal`), Anthropic `thinking` (off: disabled; low/medium/high: a budget of 1024/4096/16384 tokens below max_tokens), Gemini `thinkingConfig.thinkingBudget` (0/1024/8192/24576). Absent: the model's default."
    },
    "temperature": {
      "description": "Sampling temperature, 0 to 2; absent: the provider's default.",
      "type": [
        "number",
        "null"
      ],
      "minimum": 0,
      "maximum": 2
    },
    "stop": {
      "description": "Up to 4 non-empty stop sequences.",
      "type": [
        "array",
        "null"
      ],
      "maxItems": 4,
      "items": {
        "type": "string",
        "minLength": 1
      }
    },
    "timeout_ms": {
      "type": [
        "integer",
        "null"
      ],
      "minimum": 1000,
      "maximum": 3600000,
      "description": "Timeout of one provider attempt, in milliseconds (at least 1000: providers bill attempts that are cut short)."
    },
    "deadline_ms": {
      "type": [
        "integer",
        "null"
      ],
      "minimum": 0,
      "description": "Absolute deadline, Unix epoch milliseconds. A job not finished by then ends DEADLINE_EXCEEDED."
    },
    "purpose": {
      "type": [
        "string",
        "null"
      ],
      "maxLength": 128,
      "description": "What the extraction is for (e.g. `expense-report`); used in logs."
    },
    "agent_id": {
      "type": [
        "string",
        "null"
      ],
      "minLength": 1,
      "maxLength": 128,
      "description": "The agent the plugin runs the job for. Needs the plugin's `agent_id_override` (NOT_AUTHORIZED otherwise). In the job's span and log lines and echoed on the result; never a metric label."
    },
    "metadata": {
      "description": "Opaque value echoed back on the result unchanged; at most 16384 bytes as compact JSON (workers check it; a JSON Schema cannot count bytes)."
    }
  },
  "$defs": {
    "part": {
      "oneOf": [
        {
          "type": "object",
          "additionalProperties": false,
          "required": [
            "type",
            "text"
          ],
          "properties": {
            "type": {
              "const": "text"
            },
            "text": {
              "type": "string"
            }
          }
        },
        {
          "type": "object",
          "additionalProperties": false,
          "required": [
            "type",
            "mime",
            "data"
          ],
          "properties": {
            "type": {
              "const": "image"
            },
            "mime": {
              "enum": [
                "image/png",
                "image/jpeg",
                "image/webp",
                "image/gif"
              ]
            },
            "data": {
              "description": "The image bytes in standard base64 (RFC 4648 section 4: the + / alphabet, padded with =), without line breaks or a data: URL prefix. URL-safe or unpadded forms are INVALID_REQUEST.",
              "type": "string",
              "contentEncoding": "base64",
              "minLength": 1,
              "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
            }
          }
        }
      ]
    }
  }
} as const;
