// Generated from schemas/json/control.v1.schema.json by scripts/generate-types.mjs: do not edit.

/**
 * A request to the fleet, published by a plugin to the exchange `quarry.control` (any routing key) with `user_id` (the plugin's broker user), `reply_to` and `correlation_id`, `type` `quarry.control.v1`. A worker applies it for the publishing plugin only and answers a control-reply.v1 message.
 */
export interface ControlV1 {
  /**
   * The message version.
   */
  version: 'control.v1';
  /**
   * `cancel_batch`: jobs of the batch not yet started end CANCELLED; jobs in flight finish. Lasts `redis.cancel_ttl_secs`. `batch_status`: the reply carries the batch's progress counters. `describe`: the reply carries the caller's own view of the fleet (takes no batch_id). `cancel_job`: one job (`job_id`, with its `batch_id` when it was published in one): not started, it ends CANCELLED without a call; in flight, its provider call is dropped (noticed within a third of the workers' claim lifetime) and it ends CANCELLED; finished, it keeps its result.
   */
  action: 'cancel_batch' | 'batch_status' | 'describe' | 'cancel_job';
  /**
   * A batch of the publishing plugin: required by cancel_batch and batch_status, optional with cancel_job (the job's batch), refused by describe.
   */
  batch_id?: string;
  /**
   * cancel_job: one of the publishing plugin's jobs; refused by the other actions.
   */
  job_id?: string;
}
