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

pub(crate) async fn models(cli: &Cli) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    let view = client.describe(CONTROL_TIMEOUT).await?;
    let _ = client.close().await;
    let images = |yes: bool| if yes { " (images)" } else { "" };
    println!(
        "plugin {} (contract {})",
        view.plugin,
        view.contract.join(", ")
    );
    for alias in &view.aliases {
        let marker = if alias.name == view.default_model {
            " (default)"
        } else {
            ""
        };
        let targets: Vec<String> = alias
            .targets
            .iter()
            .map(|t| format!("{}/{}{}", t.provider, t.model, images(t.images)))
            .collect();
        println!("  alias {}{marker}: {}", alias.name, targets.join(" -> "));
    }
    for target in &view.targets {
        println!(
            "  target {}/{}{}",
            target.provider,
            target.model,
            images(target.images)
        );
    }
    println!(
        "  profiles: {} (default {})",
        view.profiles.join(", "),
        view.default_profile
    );
    let ceiling = view
        .max_tokens_ceiling
        .map_or(String::new(), |c| format!(", at most {c}"));
    println!(
        "  max_tokens: {} by default{ceiling}; time budget {} ms without a deadline",
        view.default_max_tokens, view.job_budget_ms
    );
    for quota in &view.quotas {
        let left = quota
            .remaining
            .map_or("unknown".to_owned(), |r| r.to_string());
        println!("  quota {}: {} ({left} left)", quota.name, quota.limit);
    }
    Ok(())
}
