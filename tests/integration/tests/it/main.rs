//! The integration suite, one test binary (one link, one build) with a module per concern.
//! Every test runs against the real RabbitMQ and Redis on this machine, in its own namespace,
//! in parallel; nextest runs each in its own process (the metric-delta tests rely on it).
//!
//! | module | what it proves |
//! |---|---|
//! | `cli` | the `quarry` command line: submit, status, cancel, dead letters |
//! | `delivery` | the idempotency claim, redeliveries, cancellation, graceful shutdown |
//! | `fleet` | several workers on one broker: throughput, backlog, scaling signals |
//! | `hostile` | a hostile plugin cannot reach another's results, queues, budget or keys |
//! | `limits` | shared request, token, concurrency and daily limits, the key pool, Redis outages |
//! | `local_model` | the real-inference tier (ignored unless `QUARRY_LOCAL_MODEL_URL` is set) |
//! | `ops` | compose, Kubernetes, Prometheus and Grafana artefacts against their validators |
//! | `providers` | each provider kind through the fleet, faults included |
//! | `reload` | `SIGHUP` and the watched file change plugins and aliases of a running worker |
//! | `streaming` | streamed calls: order, reassembly, resets, cancel, limits, a worker killed mid-stream |
//! | `secrets` | no key in a log, a metric, a result, a dead letter or Redis |
//! | `trust` | broker users and permissions as `deploy/rabbitmq/quarry-user` sets them |

mod cli;
mod delivery;
mod fleet;
mod hostile;
mod limits;
mod local_model;
mod ops;
mod providers;
mod reload;
mod secrets;
mod streaming;
mod trust;
