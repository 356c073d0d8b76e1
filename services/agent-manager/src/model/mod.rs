//! The domain's values, at the bottom of the crate: nothing here does I/O
//! or speaks the wire. An agent (its spec, policy, limits, record), a task's
//! state and outcome, an approval, an event.

mod agent;
pub(crate) mod approval;
pub(crate) mod event;
mod exit;
pub(crate) mod task;

pub(crate) use agent::*;
pub(crate) use exit::ExitInfo;
