//! The server's background tasks, watched: one that panics, or ends while the server is
//! not stopping, is logged at ERROR and counted (`auth_background_task_failures_total`);
//! one whose loss breaks a promise (the token-change listener: without it the cache is
//! off for good) makes the replica not ready and stops it with exit 1, so that the
//! orchestrator starts a whole one.
use std::future::Future;

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

/// A task that ended when it should not have.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) task: &'static str,
    /// Whether the server must stop.
    pub(crate) critical: bool,
    pub(crate) why: String,
}

/// Hands out watched tasks, and the channel their failures arrive on.
pub(crate) struct Watch {
    failures: mpsc::UnboundedSender<Failure>,
    stop: watch::Receiver<bool>,
}

impl Watch {
    /// A watch that treats an end after `stop` turned true as normal.
    pub(crate) fn new(stop: watch::Receiver<bool>) -> (Watch, mpsc::UnboundedReceiver<Failure>) {
        let (failures, rx) = mpsc::unbounded_channel();
        (Watch { failures, stop }, rx)
    }

    /// Watches `task` (spawned already); the returned handle ends when it does.
    pub(crate) fn task(
        &self,
        name: &'static str,
        critical: bool,
        task: JoinHandle<()>,
    ) -> JoinHandle<()> {
        self.future(name, critical, async move {
            task.await.map_err(|e| match e.try_into_panic() {
                Ok(panic) => format!("panicked: {}", panic_message(&panic)),
                Err(e) => e.to_string(),
            })
        })
    }

    /// Watches a future that says how its task ended (a thread's, say).
    pub(crate) fn future<F>(&self, name: &'static str, critical: bool, ended: F) -> JoinHandle<()>
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let (failures, stop) = (self.failures.clone(), self.stop.clone());
        tokio::spawn(async move {
            let ended = ended.await;
            let why = match ended {
                Ok(()) if *stop.borrow() => return,
                Ok(()) => "ended while the server was not stopping".to_owned(),
                Err(why) => why,
            };
            let _ = failures.send(Failure {
                task: name,
                critical,
                why,
            });
        })
    }
}

/// What a panic said, when it said it in text.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_and_an_early_end_are_reported_an_end_at_shutdown_is_not() {
        let (stop_tx, stop) = watch::channel(false);
        let (watch, mut failures) = Watch::new(stop);
        let _a = watch.task("a", true, tokio::spawn(async { panic!("boom") }));
        let f = failures.recv().await.unwrap();
        assert_eq!((f.task, f.critical), ("a", true));
        assert!(f.why.contains("boom"), "{}", f.why);
        let _b = watch.task("b", false, tokio::spawn(async {}));
        let f = failures.recv().await.unwrap();
        assert_eq!((f.task, f.critical), ("b", false));
        stop_tx.send(true).unwrap();
        let c = watch.task("c", true, tokio::spawn(async {}));
        c.await.unwrap();
        drop(watch);
        assert!(
            failures.recv().await.is_none(),
            "an end at shutdown is normal"
        );
    }
}
