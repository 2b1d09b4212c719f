//! Why a call to the coordinator failed, typed by what the caller can do
//! about it.

/// Why a call to the coordinator failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The coordinator URL could not be used.
    #[error("invalid coordinator URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The TLS settings could not be used.
    #[error("TLS settings for {url:?} cannot be used: {reason}")]
    BadTls { url: String, reason: String },
    /// The client token cannot be sent in a header.
    #[error("the client token cannot be sent: {0}")]
    BadToken(String),
    /// The request was refused as malformed; fix it, do not retry.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No such transaction.
    #[error("not found: {0}")]
    NotFound(String),
    /// The transaction's state does not allow this (enlisting into a
    /// committed transaction, rolling back a committed one).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A branch of that name exists with other content.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A limit was reached (branches per transaction).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The coordinator could not be reached or could not record; retrying
    /// (with the same idempotency key) is safe.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The coordinator requires a token this client did not send, or sent
    /// wrong ([`crate::CoordinatorClient::with_token`]); retrying will not help.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// No answer in time; the outcome may still be decided — ask
    /// [`crate::CoordinatorClient::transaction`].
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("{code:?}: {message}")]
    Other { code: tonic::Code, message: String },
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::InvalidArgument => Self::InvalidArgument(message),
            tonic::Code::NotFound => Self::NotFound(message),
            tonic::Code::FailedPrecondition => Self::FailedPrecondition(message),
            tonic::Code::AlreadyExists => Self::AlreadyExists(message),
            tonic::Code::ResourceExhausted => Self::ResourceExhausted(message),
            tonic::Code::Unavailable => Self::Unavailable(message),
            tonic::Code::Unauthenticated => Self::Unauthenticated(message),
            // tonic reports a broken connection as UNKNOWN "transport
            // error": the coordinator may be fine, the call can be retried.
            tonic::Code::Unknown if message.contains("transport error") => {
                Self::Unavailable(message)
            }
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Self::DeadlineExceeded(message)
            }
            code => Self::Other { code, message },
        }
    }
}
