//! The service's errors: the shared typed error of `shepherd-platform`.

pub use shepherd_platform::error::{Error, Result};
