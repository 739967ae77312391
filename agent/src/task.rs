//! How spawned tasks and threads end: every one the agent starts is awaited at shutdown and
//! its outcome logged, so a task that panicked (or hung) never disappears silently.

use std::any::Any;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};

/// The value of a task that returned; logs a panic (error) or a cancellation (debug: the
/// agent cancels tasks on purpose at shutdown) and gives `None`.
pub fn joined<T>(what: &str, r: Result<T, JoinError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if e.is_panic() => {
            tracing::error!(task = what, "task panicked: {}", message(e.into_panic()));
            None
        }
        Err(e) => {
            tracing::debug!(task = what, "task cancelled: {e}");
            None
        }
    }
}

/// The value of a thread that returned; logs a panic and gives `None`.
pub fn thread_joined<T>(what: &str, r: std::thread::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(p) => {
            tracing::error!(task = what, "thread panicked: {}", message(p));
            None
        }
    }
}

/// Waits up to `limit` for a task; one that does not end by then is logged and left to the
/// runtime's shutdown.
pub async fn join_within<T>(what: &str, handle: JoinHandle<T>, limit: Duration) -> Option<T> {
    match tokio::time::timeout(limit, handle).await {
        Ok(r) => joined(what, r),
        Err(_) => {
            tracing::warn!(task = what, "task did not stop within {limit:?}");
            None
        }
    }
}

fn message(p: Box<dyn Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "(no message)".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_are_reported_with_their_message() {
        let h = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("boom {}", 7);
            }
        });
        let err = h.await.unwrap_err();
        assert!(err.is_panic());
        assert_eq!(message(err.into_panic()), "boom 7");
        assert_eq!(joined("ok", Ok::<_, JoinError>(3)), Some(3));
        let t = std::thread::spawn(|| -> u8 { panic!("static text") });
        let r = t.join();
        assert!(r.is_err());
        assert_eq!(thread_joined("thread", r), None);
        let slow = tokio::spawn(std::future::pending::<()>());
        assert_eq!(
            join_within("slow", slow, Duration::from_millis(10)).await,
            None
        );
    }
}
