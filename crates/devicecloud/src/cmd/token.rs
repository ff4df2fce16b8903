//! `devicecloud token ...`: API tokens for scripts (`Authorization: Bearer ...`).

use std::process::ExitCode;

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
    /// Create a token and print it once (only its hash is kept).
    Create {
        name: String,
        /// admin, operator or viewer.
        #[arg(long, default_value = "viewer")]
        role: Role,
    },
    /// List tokens (names and roles; the tokens themselves are not stored).
    List,
    /// Revoke a token; it stops working at once.
    Revoke { name: String },
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ws = args.data.open().await?;
    let store = &ws.store;
    let result: anyhow::Result<()> = async {
        match args.command {
            Command::Create { name, role } => {
                let token = secret::generate_api_token();
                store
                    .tokens()
                    .create(&name, role, &secret::hash_token(&token))
                    .await?;
                store
                    .audit()
                    .append(&actor(), "token.create", &name, &format!("role {role}"))
                    .await?;
                eprintln!("token '{name}' (role {role}) created; it is shown only now:");
                println!("{token}");
            }
            Command::List => {
                let tokens = store.tokens().list().await?;
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.role.to_string(),
                            format_time(t.created_at),
                            t.last_used
                                .map(format_time)
                                .unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "ROLE", "CREATED", "LAST USED"], &rows);
            }
            Command::Revoke { name } => {
                store.tokens().revoke(&name).await?;
                store
                    .audit()
                    .append(&actor(), "token.revoke", &name, "")
                    .await?;
                println!("token '{name}' revoked.");
            }
        }
        Ok(())
    }
    .await;
    ws.store.close().await;
    result.map(|()| ExitCode::SUCCESS)
}
