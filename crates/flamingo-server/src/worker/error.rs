//! What the worker can say went wrong, in its own terms; the HTTP edge maps it (`From` below)
//! to the status and body a client sees.

use crate::error::{ApiError, ErrorKind};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// Every queue place is taken (requests being prepared count).
    #[error("the request queue is full ({max_queue} waiting); retry later")]
    QueueFull {
        max_queue: usize,
        retry_after_s: u64,
    },
    /// The worker thread has stopped (it died, or the server is shutting down).
    #[error("the model worker is not running")]
    Stopped { retry_after_s: u64 },
    /// The request's deadline passed while it waited or generated.
    #[error("the request passed its deadline (server.request_timeout_s)")]
    DeadlinePassed,
    /// The engine refused the sequence (its own checks, after the server's validation).
    #[error("{0}")]
    Refused(String),
    /// A model call failed or panicked (a bug or a device fault), for this request or its batch.
    #[error("{0}")]
    ModelFailed(String),
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        let message = e.to_string();
        match e {
            WorkerError::QueueFull { retry_after_s, .. } => {
                ApiError::new(ErrorKind::Overloaded, message).retry_after(retry_after_s)
            }
            WorkerError::Stopped { retry_after_s } => ApiError::unavailable(message, retry_after_s),
            WorkerError::DeadlinePassed => ApiError::new(ErrorKind::Timeout, message),
            WorkerError::Refused(_) => ApiError::validation(message),
            WorkerError::ModelFailed(_) => ApiError::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn each_error_has_its_status_and_retry_hint() {
        let cases = [
            (
                WorkerError::QueueFull {
                    max_queue: 4,
                    retry_after_s: 2,
                },
                StatusCode::TOO_MANY_REQUESTS,
                Some(2),
            ),
            (
                WorkerError::Stopped { retry_after_s: 1 },
                StatusCode::SERVICE_UNAVAILABLE,
                Some(1),
            ),
            (
                WorkerError::DeadlinePassed,
                StatusCode::GATEWAY_TIMEOUT,
                None,
            ),
            (
                WorkerError::Refused("too long".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                None,
            ),
            (
                WorkerError::ModelFailed("step failed".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
            ),
        ];
        for (e, status, retry) in cases {
            let api = ApiError::from(e.clone());
            assert_eq!(api.kind.status(), status, "{e:?}");
            assert_eq!(api.retry_after_s, retry, "{e:?}");
            assert_eq!(api.message, e.to_string());
        }
    }
}
