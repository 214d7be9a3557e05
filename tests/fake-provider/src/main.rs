//! `quarry-fake-provider`: run the fake provider as a process.

use clap::Parser;
use quarry_fake_provider::faults::Profile;
use quarry_fake_provider::{FakeConfig, Stats, serve};
use std::sync::Arc;
use std::time::Duration;

/// A fake LLM provider speaking the OpenAI, Anthropic and Gemini wire formats.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port, printed on start).
    #[arg(long, env = "FAKE_PROVIDER_LISTEN", default_value = "127.0.0.1:8089")]
    listen: String,
    /// Base latency of every answer, milliseconds.
    #[arg(long, env = "FAKE_PROVIDER_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Extra random latency up to this many milliseconds (deterministic per request).
    #[arg(long, env = "FAKE_PROVIDER_JITTER_MS", default_value_t = 0)]
    jitter_ms: u64,
    /// Require this key (Bearer, x-api-key or x-goog-api-key, as each format does).
    #[arg(long, env = "FAKE_PROVIDER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Fault probabilities for every request, e.g. `rate_limit=0.3,server_error=0.1,timeout=0.05,invalid_json=0.05`.
    /// Faults: rate_limit, auth, proxy_auth, server_error, overloaded, timeout, invalid_json,
    /// truncated, schema_invalid, refusal, bad_request, payment_required, not_found,
    /// malformed. Output faults hit first answers only.
    #[arg(long, env = "FAKE_PROVIDER_FAULTS", default_value = "")]
    faults: Profile,
    /// How long a `timeout` fault holds a request, milliseconds.
    #[arg(long, env = "FAKE_PROVIDER_HANG_MS", default_value_t = 300_000)]
    hang_ms: u64,
    /// The provider's own limit: requests per API key in any 60 s (429 past it).
    #[arg(long, env = "FAKE_PROVIDER_KEY_RPM")]
    key_rpm: Option<u64>,
    /// The provider's per-second slice: requests per API key in any 1 s (429 past it; needs
    /// `--key-rpm`).
    #[arg(long, env = "FAKE_PROVIDER_KEY_PER_SECOND")]
    key_per_second: Option<u64>,
    /// Quote the presented API key in every error message (for leak tests).
    #[arg(long)]
    echo_key: bool,
    /// Milliseconds before each event of a streamed answer.
    #[arg(long, env = "FAKE_PROVIDER_STREAM_CHUNK_MS", default_value_t = 0)]
    stream_chunk_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!(
        "quarry-fake-provider listening on http://{}/v1",
        listener.local_addr()?
    );
    let config = FakeConfig {
        latency: Duration::from_millis(args.latency_ms),
        jitter: Duration::from_millis(args.jitter_ms),
        api_key: args.api_key,
        profile: args.faults,
        hang: Some(Duration::from_millis(args.hang_ms)),
        key_rpm: args.key_rpm,
        key_per_second: args.key_per_second,
        echo_key: args.echo_key,
        stream_chunk_delay: Duration::from_millis(args.stream_chunk_ms),
    };
    let server = serve(listener, config, Arc::new(Stats::default()));
    tokio::select! {
        result = server => result?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
