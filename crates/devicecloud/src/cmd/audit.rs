//! `devicecloud audit`: the log of administrative actions, newest first.

use std::process::ExitCode;

use super::device::{DataArgs, format_time, print_table};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    /// How many entries to show.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ws = args.data.open().await?;
    let entries = ws.store.audit().list(i64::from(args.limit)).await;
    ws.store.close().await;
    let rows: Vec<Vec<String>> = entries?
        .into_iter()
        .map(|e| vec![format_time(e.ts), e.actor, e.action, e.subject, e.detail])
        .collect();
    print_table(&["TIME", "ACTOR", "ACTION", "SUBJECT", "DETAIL"], &rows);
    Ok(ExitCode::SUCCESS)
}
