//! A task as the manager sees it: where its delivery stands, and how it
//! ended.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Delivered,
    Accepted,
    Completed,
    Lost,
}

impl TaskState {
    pub(crate) fn parse(text: &str) -> Result<Self> {
        match text {
            "delivered" => Ok(Self::Delivered),
            "accepted" => Ok(Self::Accepted),
            "completed" => Ok(Self::Completed),
            "lost" => Ok(Self::Lost),
            other => Err(Error::internal(format!(
                "unknown task state {other:?} in database"
            ))),
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    Succeeded,
    Failed,
    /// Its deadline passed and it was stopped.
    TimedOut,
    /// Cancelled on request.
    Cancelled,
}

impl TaskOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            "timed_out" => Some(Self::TimedOut),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}
