use ors_scxml::Diagnostic;

/// Why a runtime call failed; the HTTP layer maps each kind to a status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("session {0} not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid document")]
    InvalidDocument(Vec<Diagnostic>),
    #[error("{0}")]
    TooLarge(String),
    #[error("overloaded: {0}")]
    Overloaded(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("session {session} is owned by node {node}")]
    WrongNode { session: String, node: String },
    #[error("store unavailable: {0}")]
    Store(String),
    #[error("shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ors_store::StoreError> for ApiError {
    fn from(e: ors_store::StoreError) -> Self {
        ApiError::Store(e.to_string())
    }
}
