//! `quarry-fake-provider`: run the fake OpenAI-compatible provider as a process.

use clap::Parser;
use quarry_fake_provider::{FakeConfig, Stats, serve};
use std::sync::Arc;
use std::time::Duration;

/// A fake LLM provider speaking the OpenAI chat-completions wire format.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0 picks a free port, printed on start).
    #[arg(long, env = "FAKE_PROVIDER_LISTEN", default_value = "127.0.0.1:8089")]
    listen: String,
    /// Base latency of every completion, milliseconds.
    #[arg(long, env = "FAKE_PROVIDER_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Extra random latency up to this many milliseconds (deterministic per request).
    #[arg(long, env = "FAKE_PROVIDER_JITTER_MS", default_value_t = 0)]
    jitter_ms: u64,
    /// Require `Authorization: Bearer <key>`.
    #[arg(long, env = "FAKE_PROVIDER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
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
    };
    let server = serve(listener, config, Arc::new(Stats::default()));
    tokio::select! {
        result = server => result?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
