//! `quarry dead-letters list|redrive`, over the SDK's `DeadLetters`.

use crate::prelude::*;

pub(crate) async fn dead_letters(cli: &Cli, command: &DeadLetterCommand) -> anyhow::Result<()> {
    let letters =
        quarry_producer::DeadLetters::connect(&cli.amqp_url, &cli.namespace, &cli.worker_user)
            .await?;
    let dead_queue = letters.queue();
    let outcome = match command {
        DeadLetterCommand::List { limit } => letters.list(*limit).await.map(|found| {
            for l in &found {
                println!(
                    "{}\tqueue={}\tplugin={}\tjob={}\t{}",
                    l.reason, l.queue, l.plugin, l.job_id, l.detail
                );
            }
            println!(
                "{} dead letters shown (of {dead_queue}; they stay there)",
                found.len()
            );
        }),
        DeadLetterCommand::Redrive { reason, limit } => letters
            .redrive(reason.as_deref(), *limit)
            .await
            .map(|done| {
                println!(
                    "re-drove {} jobs to their lanes; {} letters left in {dead_queue}",
                    done.redriven, done.skipped
                );
            }),
    };
    letters.close().await;
    Ok(outcome?)
}
