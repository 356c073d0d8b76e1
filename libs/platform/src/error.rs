//! The errors of the shared plumbing (validation, paging, the database),
//! and the one mapping to gRPC status codes that each service's own error
//! goes through at its edge.

use std::sync::Arc;

use crate::batch::BatchError;
use crate::db::{DbError, PoolError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known, but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Db(DbError::Postgres(err))
    }
}

impl From<PoolError> for Error {
    fn from(err: PoolError) -> Self {
        Self::Db(DbError::Pool(err))
    }
}

impl From<BatchError<Arc<DbError>>> for Error {
    fn from(err: BatchError<Arc<DbError>>) -> Self {
        match err {
            BatchError::Failed(db) => Self::Db(DbError::Shared(db)),
            BatchError::Stopped => Self::Unavailable("the service is shutting down".into()),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let status = status_of(err);
        // A safety net under the input bounds: a message never carries a
        // large input back (clients refuse trailers over 16 KiB).
        if status.message().len() > MAX_MESSAGE {
            let mut message = status.message().to_owned();
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
            return tonic::Status::with_details(
                status.code(),
                message,
                status.details().to_vec().into(),
            );
        }
        status
    }
}

/// Longest error message sent.
const MAX_MESSAGE: usize = 1000;

fn status_of(err: Error) -> tonic::Status {
    {
        match err {
            // The field and its rule also as a google.rpc.BadRequest field
            // violation, for clients that map errors to form fields.
            Error::InvalidArgument { field, reason } => {
                use tonic_types::{ErrorDetails, StatusExt};
                let message = format!("invalid {field}: {reason}");
                let details = ErrorDetails::with_bad_request_violation(field, reason);
                tonic::Status::with_error_details(tonic::Code::InvalidArgument, message, details)
            }
            Error::NotFound(msg) => tonic::Status::not_found(msg),
            Error::AlreadyExists(msg) => tonic::Status::already_exists(msg),
            Error::FailedPrecondition(msg) => tonic::Status::failed_precondition(msg),
            Error::Unauthenticated(msg) => tonic::Status::unauthenticated(msg),
            Error::PermissionDenied(msg) => tonic::Status::permission_denied(msg),
            Error::Unavailable(msg) => tonic::Status::unavailable(msg),
            Error::Db(db) => {
                // Details stay in the log; the client learns only that the
                // database is the problem and that retrying may help.
                tracing::error!(error = %db, "database error");
                tonic::Status::unavailable("the service's database is unavailable; retry later")
            }
            Error::Internal(msg) => {
                tracing::error!(error = %msg, "internal error");
                tonic::Status::internal(msg)
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every service's own error holds besides its domain's failures:
/// the shared kinds (bad input, not found, the database, ...) as one
/// `Common(shepherd_platform::error::Error)` variant, constructors for
/// them, and `?` on the plumbing's errors (the database driver, the pool, a
/// batcher). Written once here, not mirrored per service; each service then
/// maps only its own variants to a kind, once, in `From<Error> for Status`.
#[macro_export]
macro_rules! common_errors {
    ($error:ty) => {
        #[allow(dead_code)]
        impl $error {
            pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
                Self::Common($crate::error::Error::invalid(field, reason))
            }
            pub fn not_found(message: impl Into<String>) -> Self {
                Self::Common($crate::error::Error::NotFound(message.into()))
            }
            pub fn already_exists(message: impl Into<String>) -> Self {
                Self::Common($crate::error::Error::AlreadyExists(message.into()))
            }
            pub fn failed_precondition(message: impl Into<String>) -> Self {
                Self::Common($crate::error::Error::FailedPrecondition(message.into()))
            }
            pub fn permission_denied(message: impl Into<String>) -> Self {
                Self::Common($crate::error::Error::PermissionDenied(message.into()))
            }
            pub fn unavailable(message: impl Into<String>) -> Self {
                Self::Common($crate::error::Error::Unavailable(message.into()))
            }
            pub fn internal(message: impl Into<String>) -> Self {
                Self::Common($crate::error::Error::Internal(message.into()))
            }
        }

        impl From<$crate::db::DbError> for $error {
            fn from(err: $crate::db::DbError) -> Self {
                Self::Common($crate::error::Error::Db(err))
            }
        }

        impl From<$crate::db::PostgresError> for $error {
            fn from(err: $crate::db::PostgresError) -> Self {
                Self::Common($crate::error::Error::from(err))
            }
        }

        impl From<$crate::db::PoolError> for $error {
            fn from(err: $crate::db::PoolError) -> Self {
                Self::Common($crate::error::Error::from(err))
            }
        }

        impl From<$crate::batch::BatchError<::std::sync::Arc<$crate::db::DbError>>> for $error {
            fn from(err: $crate::batch::BatchError<::std::sync::Arc<$crate::db::DbError>>) -> Self {
                Self::Common($crate::error::Error::from(err))
            }
        }
    };
}
