// Quarry producer SDK for TypeScript: see README.md.

export { QuarryClient, type ClientOptions, type Description, type BatchStatus } from './client.js';
export {
  Batch,
  type BatchItem,
  type BatchJob,
  type BatchOptions,
  type BatchProgress,
} from './batch.js';
export { ChunkOrder, type StreamEvent, type ResetReason } from './stream.js';
export {
  QuarryError,
  CONTRACT_ERROR_CODES,
  type ContractErrorCode,
  type ClientErrorCode,
  type ErrorSource,
} from './errors.js';
export type {
  CallOptions,
  CallResult,
  ChatMessage,
  CompleteRequest,
  ImageMime,
  InputPart,
  JobOptions,
  JsonSchemaLike,
  Reasoning,
  StaticOf,
  StructuredRequest,
  StructuredResult,
  Usage,
} from './requests.js';
export { Topology, canonicalJson, newJobId, batchJobId, type Lane } from './wire.js';
export type { JobV1 } from './generated/job.v1.js';
export type { ResultV1 } from './generated/result.v1.js';
export type { ChunkV1 } from './generated/chunk.v1.js';
export type { ControlV1 } from './generated/control.v1.js';
export type { ControlReplyV1 } from './generated/control-reply.v1.js';
