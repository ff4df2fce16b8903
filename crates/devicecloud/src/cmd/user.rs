//! `devicecloud user ...`: local users (dashboard and MQTT logins) and their roles.

use std::{
    io::{BufRead, IsTerminal},
    process::ExitCode,
};

use anyhow::{Context, bail};
use store::{Role, secret};

use super::device::{DataArgs, actor, format_time, print_table};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add a user. The password is read from standard input when it is not a terminal,
    /// else prompted for twice.
    Add {
        name: String,
        /// admin (everything), operator (read everything, send commands), viewer (read only).
        #[arg(long)]
        role: Role,
    },
    /// List users and their roles.
    List,
    /// Remove a user; their sessions end.
    Remove { name: String },
    /// Change a user's password (read like for add); their sessions end.
    Passwd { name: String },
}

/// Reads a new password: one line from stdin if it is not a terminal, else prompted twice.
fn read_new_password(name: &str) -> anyhow::Result<String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for '{name}': "))?;
        let second = rpassword::prompt_password("Repeat it: ")?;
        if first != second {
            bail!("the passwords do not match; nothing was changed");
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    secret::check_password_strength(&password)?;
    Ok(password)
}

async fn hash(password: String) -> anyhow::Result<String> {
    // argon2 is deliberately slow: keep it off the async threads.
    Ok(tokio::task::spawn_blocking(move || secret::hash_password(&password)).await??)
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ws = args.data.open().await?;
    let store = &ws.store;
    let result: anyhow::Result<()> = async {
        match args.command {
            Command::Add { name, role } => {
                if store.users().get(&name).await?.is_some() {
                    return Err(store::Error::UserExists(name).into());
                }
                let hash = hash(read_new_password(&name)?).await?;
                store.users().add(&name, role, &hash).await?;
                store
                    .audit()
                    .append(&actor(), "user.add", &name, &format!("role {role}"))
                    .await?;
                println!("user '{name}' added with role {role}.");
            }
            Command::List => {
                let users = store.users().list().await?;
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            u.role.to_string(),
                            format_time(u.created_at),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "ROLE", "CREATED"], &rows);
            }
            Command::Remove { name } => {
                store.users().remove(&name).await?;
                store
                    .audit()
                    .append(&actor(), "user.remove", &name, "")
                    .await?;
                println!("user '{name}' removed.");
            }
            Command::Passwd { name } => {
                if store.users().get(&name).await?.is_none() {
                    return Err(store::Error::UserNotFound(name).into());
                }
                let hash = hash(read_new_password(&name)?).await?;
                store.users().set_password(&name, &hash).await?;
                store
                    .audit()
                    .append(&actor(), "user.passwd", &name, "")
                    .await?;
                println!("password of '{name}' changed; their sessions have ended.");
            }
        }
        Ok(())
    }
    .await;
    ws.store.close().await;
    result.map(|()| ExitCode::SUCCESS)
}
