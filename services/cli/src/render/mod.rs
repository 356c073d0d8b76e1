//! Turning API resources into rows (tables) and JSON objects (scripts):
//! `format` holds the two ways; each other module renders one family of
//! resources.

mod agents;
mod approvals;
mod audit;
mod events;
mod format;
mod workflows;

pub(crate) use approvals::{approval_shown, approval_state};
pub(crate) use audit::Audited;
pub(crate) use events::event;
pub(crate) use format::{Render, many, one, one_with_budget};
pub(crate) use workflows::task_event;
