//! Live agent sessions: the registry that dispatch reads (`registry`,
//! `handle`), and the loop that runs one session (`session_loop`, with the
//! tasks in flight on it in `in_flight` and what the agent reports in
//! `reports`).
//!
//! Ownership: only an agent's supervisor installs or removes its entry, so
//! "which session is current" changes in one place, in order with the
//! agent's other state changes. A session loop never touches the registry;
//! when it ends it tells the supervisor (`SessionClosed`).

mod handle;
mod in_flight;
mod registry;
mod reports;
mod session_loop;
mod token;

pub(crate) use handle::{AcceptedTasks, SessionHandle};
pub(crate) use registry::Sessions;
pub(crate) use reports::{MAX_OUTPUT_BYTES, MAX_PROGRESS_MESSAGE_BYTES, MAX_PROGRESS_OUTPUT_BYTES};
pub(crate) use session_loop::{CarriedTask, SessionLoop};
pub(crate) use token::{hash_token, new_token};
