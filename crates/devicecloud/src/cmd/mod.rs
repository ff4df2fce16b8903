//! One module per subcommand. Each has `Args` (clap) and `async fn run(Args) -> anyhow::Result<ExitCode>`.

pub mod agent;
pub mod audit;
pub mod broker;
pub mod device;
pub mod server;
pub mod token;
pub mod up;
pub mod user;
