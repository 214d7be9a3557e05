//! `quarry status` and `quarry cancel`: control requests to the fleet.

use crate::prelude::*;

pub(crate) async fn status(cli: &Cli, batch_id: &str) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    let status = client.batch_status(batch_id, CONTROL_TIMEOUT).await?;
    let _ = client.close().await;
    let counts = &status.counts;
    if counts.is_empty() {
        println!("batch {batch_id}: no results stored (unknown batch, or none finished yet)");
        return Ok(());
    }
    let tokens = counts.get("tokens").copied().unwrap_or(0);
    let ok = counts.get("ok").copied().unwrap_or(0);
    let errors: Vec<(&String, &u64)> = counts
        .iter()
        .filter(|(k, _)| k.as_str() != "ok" && k.as_str() != "tokens")
        .collect();
    let failed: u64 = errors.iter().map(|(_, n)| **n).sum();
    println!("batch {batch_id}: {} results stored", ok + failed);
    println!("  ok:      {ok}");
    let by_code: Vec<String> = errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
    if by_code.is_empty() {
        println!("  errors:  0");
    } else {
        println!("  errors:  {failed} ({})", by_code.join(", "));
    }
    println!("  tokens:  {tokens}");
    if let Some(cost) = status.cost_usd {
        println!("  cost:    ${cost:.6}");
    }
    Ok(())
}

pub(crate) async fn cancel(cli: &Cli, batch_id: &str) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    client.cancel_batch(batch_id, CONTROL_TIMEOUT).await?;
    let _ = client.close().await;
    println!(
        "batch {batch_id} cancelled: jobs not yet started end CANCELLED; jobs in flight finish"
    );
    Ok(())
}
