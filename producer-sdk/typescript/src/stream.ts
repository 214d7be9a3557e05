// Streamed calls: a job's answer as it is written (`chunk.v1`), then its result.

import type { ChunkV1 } from './generated/chunk.v1.js';
import type { ResultV1 } from './generated/result.v1.js';

/** Why a stream dropped what it showed (docs/wire-contract.md, "Streaming"). */
export type ResetReason = 'retry' | 'repair' | 'redelivered' | 'rewritten' | (string & {});

/**
 * One event of a streamed call:
 * - `delta`: more of the answer; append it to what is shown.
 * - `partial`: JSON mode, the best-effort parse of the answer so far (after its delta).
 * - `reset`: drop what is shown (the attempt failed, its answer went to the repair loop, or
 *   another delivery starts over); the deltas that follow start the answer again.
 * - `final`: the validated result, the last event; its `text` is the deltas since the last
 *   reset, concatenated.
 */
export type StreamEvent<R> =
  | { type: 'delta'; text: string }
  | { type: 'partial'; value: unknown }
  | { type: 'reset'; reason: ResetReason }
  | { type: 'final'; result: R };

/** Turns the chunks of one job into events, in order: a chunk of an earlier delivery or a
 * duplicate is dropped, and a delivery that starts over without its reset gets one. */
export class ChunkOrder {
  private nextSeq = 0;
  private shown = false;

  /** The events of one chunk. */
  events(chunk: ChunkV1): Array<StreamEvent<never>> {
    const out: Array<StreamEvent<never>> = [];
    if (typeof chunk?.seq !== 'number') return out;
    if (chunk.seq === 0 && this.nextSeq > 0) {
      if (this.shown && chunk.kind === 'delta') {
        out.push({ type: 'reset', reason: 'redelivered' });
        this.shown = false;
      }
    } else if (chunk.seq !== this.nextSeq) {
      return out;
    }
    this.nextSeq = chunk.seq + 1;
    if (chunk.kind === 'reset') {
      out.push({ type: 'reset', reason: chunk.reason ?? 'other' });
      this.shown = false;
    } else {
      if (typeof chunk.text === 'string' && chunk.text !== '') {
        out.push({ type: 'delta', text: chunk.text });
        this.shown = true;
      }
      if (chunk.partial !== undefined) out.push({ type: 'partial', value: chunk.partial });
    }
    return out;
  }
}

/**
 * The events of one streamed call as an async iterable. The job is published when iteration
 * starts; leaving the loop early (or the caller's `signal`) cancels it, and the worker closes
 * the provider's stream. What arrives before it is read waits here: the worker coalesces, so
 * that is at most one answer's text.
 */
export async function* streamed<R>(
  run: (onChunk: (chunk: ChunkV1) => void, signal: AbortSignal) => Promise<ResultV1>,
  finish: (result: ResultV1) => R,
  signal: AbortSignal | undefined,
): AsyncGenerator<StreamEvent<R>, void, undefined> {
  const order = new ChunkOrder();
  const queue: Array<StreamEvent<R>> = [];
  let wake: (() => void) | undefined;
  let ended = false;
  let failure: unknown;
  const stop = new AbortController();
  const onAbort = (): void => stop.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  if (signal?.aborted) stop.abort();
  const nudge = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  run((chunk) => {
    queue.push(...order.events(chunk));
    nudge();
  }, stop.signal).then(
    (result) => {
      ended = true;
      try {
        queue.push({ type: 'final', result: finish(result) });
      } catch (error) {
        failure = error;
      }
      nudge();
    },
    (error: unknown) => {
      ended = true;
      failure = error;
      nudge();
    },
  );
  try {
    for (;;) {
      const next = queue.shift();
      if (next !== undefined) {
        yield next;
        if (next.type === 'final') return;
        continue;
      }
      if (ended) {
        if (failure !== undefined) throw failure;
        return;
      }
      await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    // Left early: the call is aborted, which cancels its job.
    if (!ended) stop.abort();
  }
}
