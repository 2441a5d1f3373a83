use ors_scxml::Diagnostic;

/// Why a runtime call failed; the HTTP layer maps each kind to a status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// No such session (or it ended long enough ago to be forgotten).
    #[error("session {0} not found")]
    NotFound(String),
    /// The caller's input is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The document does not compile; every problem with its position.
    #[error("invalid document")]
    InvalidDocument(Vec<Diagnostic>),
    /// A document or request is over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// A queue or the session limit is full; retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Nothing answered in time (a `<response>`).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The session belongs to another node.
    #[error("session {session} is owned by node {node}")]
    WrongNode {
        /// The session asked for.
        session: String,
        /// The node that owns it.
        node: String,
    },
    /// The session is being moved to another node right now; retry shortly.
    #[error("session {0} is moving to another node; retry shortly")]
    Moving(String),
    /// This process is a backup of its node: the node's primary (its advertise URL, if
    /// known) serves the request.
    #[error("this process is a backup; the primary is {}", .primary.as_deref().unwrap_or("not known yet"))]
    NotPrimary {
        /// The primary's advertise URL.
        primary: Option<String>,
    },
    /// The session crashed the process again and again and is never run again.
    #[error("session {session} is quarantined: {reason}")]
    Quarantined {
        /// The session.
        session: String,
        /// Why.
        reason: String,
    },
    /// The store failed or refused a write.
    #[error("store unavailable: {0}")]
    Store(String),
    /// The runtime is stopping.
    #[error("shutting down")]
    ShuttingDown,
    /// A bug or corrupt stored data.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RuntimeError {
    /// The HTTP status an API answers this with: one mapping for every HTTP front (the
    /// REST API, the inspector).
    pub fn http_status(&self) -> u16 {
        use RuntimeError as E;
        match self {
            // A session of another node is normally answered with a 307 before this.
            E::NotFound(_) | E::WrongNode { .. } => 404,
            E::BadRequest(_) | E::InvalidDocument(_) => 400,
            E::TooLarge(_) => 413,
            E::Quarantined { .. } => 409,
            E::Timeout(_) => 504,
            E::Internal(_) => 500,
            // A backup normally answers with a 307 before this: this is the race where
            // the process stepped down while the request ran.
            E::Overloaded(_)
            | E::Moving(_)
            | E::NotPrimary { .. }
            | E::Store(_)
            | E::ShuttingDown => 503,
        }
    }
}

impl From<ors_store::StoreError> for RuntimeError {
    fn from(e: ors_store::StoreError) -> Self {
        RuntimeError::Store(e.to_string())
    }
}
