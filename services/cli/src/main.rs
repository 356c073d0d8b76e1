//! `shepherd`: the command-line client. Tables for people, `--output json`
//! for scripts, and exit codes scripts can rely on (see `--help`).

mod approvals;
mod cli;
mod clients;
mod commands;
mod mcp;
mod render;
mod top;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = exit_code(&err);
            eprintln!("error: {}", describe(&err));
            ExitCode::from(code)
        }
    }
}

/// Exit codes by gRPC status (documented in `--help`).
fn exit_code(err: &anyhow::Error) -> u8 {
    let Some(status) = err.downcast_ref::<tonic::Status>() else {
        return if err.downcast_ref::<clients::UsageError>().is_some() {
            2
        } else {
            1
        };
    };
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::NotFound => 3,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => 4,
        Code::Unavailable | Code::DeadlineExceeded => 5,
        Code::Unauthenticated | Code::PermissionDenied => 6,
        _ => 1,
    }
}

/// A message that says what went wrong and, where it helps, what to do.
fn describe(err: &anyhow::Error) -> String {
    match err.downcast_ref::<tonic::Status>() {
        Some(status) => match status.code() {
            tonic::Code::Unavailable => format!(
                "{} (is the service running? check --agent-manager-url / --scheduler-url)",
                status.message()
            ),
            tonic::Code::Unauthenticated => {
                format!("{} (set SHEPHERD_TOKEN or --token)", status.message())
            }
            _ => status.message().to_owned(),
        },
        None => format!("{err:#}"),
    }
}
