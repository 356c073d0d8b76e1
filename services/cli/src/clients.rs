//! The CLI's handle on the services: the one client library
//! (`shepherd_client::Shepherd`: connection, id-or-name lookups, paging)
//! plus how results are printed. The commands, `shepherd mcp` and
//! `shepherd top` all go through it.

use std::ops::{Deref, DerefMut};

use shepherd_client::{Shepherd, Target};

use crate::cli::{Cli, Output};

pub(crate) use shepherd_client::collect_pages;

/// Bad usage found after parsing (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

/// The two services' clients, and how results are printed.
#[derive(Clone)]
pub(crate) struct Clients {
    api: Shepherd,
    pub(crate) output: Output,
}

impl Clients {
    /// Clients of the services `cli` names, with its credential.
    pub(crate) fn connect(cli: &Cli) -> anyhow::Result<Self> {
        let target = Target {
            agent_manager_url: &cli.agent_manager_url,
            scheduler_url: &cli.scheduler_url,
            token: cli.token.as_deref(),
            ca_file: cli.ca_file.as_deref(),
        };
        let api = Shepherd::connect(target).map_err(|err| {
            match err.downcast::<shepherd_client::BadTarget>() {
                Ok(bad) => UsageError(bad.0).into(),
                Err(err) => err,
            }
        })?;
        Ok(Self {
            api,
            output: cli.output,
        })
    }

    pub(crate) fn output(&self) -> Output {
        self.output
    }
}

/// Every call of the client library is a call of the CLI's (`clients.agents`,
/// `clients.agent_id(..)`, ...).
impl Deref for Clients {
    type Target = Shepherd;

    fn deref(&self) -> &Shepherd {
        &self.api
    }
}

impl DerefMut for Clients {
    fn deref_mut(&mut self) -> &mut Shepherd {
        &mut self.api
    }
}
