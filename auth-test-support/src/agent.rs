//! The real agent daemon, started through `auth_agent::run` on the test's runtime and
//! stopped through its shutdown future.
use std::{sync::Arc, time::Duration};

use auth_agent::{AgentError, Clock, Health, RunOptions, Snapshot, health::AgentState};
use tokio::{sync::oneshot, task::JoinHandle};

/// The bound on anything that takes well under a second when the machine is idle: wide
/// enough for a machine loaded by a parallel build, short enough that a hang fails fast.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// A running daemon.
pub struct RunningAgent {
    pub health: Health,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), AgentError>>,
}

/// Starts `auth_agent::run(opts, clock, ...)` on a task.
pub fn spawn(opts: RunOptions, clock: Arc<dyn Clock>) -> RunningAgent {
    let health = opts.health.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(auth_agent::run(opts, clock, async move {
        let _ = stopped.await;
    }));
    RunningAgent { health, stop, task }
}

impl RunningAgent {
    /// Waits (at most [`PROMPTLY`] of real time) for a snapshot that satisfies `done`.
    pub async fn wait_for(&self, what: &str, mut done: impl FnMut(&Snapshot) -> bool) -> Snapshot {
        let mut rx = self.health.subscribe();
        match tokio::time::timeout(PROMPTLY, rx.wait_for(|s| done(s))).await {
            Ok(Ok(snapshot)) => snapshot.clone(),
            _ => panic!(
                "{what}: not reached within {PROMPTLY:?}; last {:?}",
                self.health.snapshot()
            ),
        }
    }

    /// Waits until the daemon has settled after an attempt (its next deadline is set).
    pub async fn settled(&self) {
        let mut rx = self.health.subscribe();
        rx.wait_for(|s| s.next_attempt_at.is_some()).await.unwrap();
    }

    /// Stops the daemon, checks that `run` returned `Ok` and the state is `stopped`.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PROMPTLY, self.task)
            .await
            .expect("run() stops promptly on shutdown")
            .unwrap()
            .unwrap();
        assert_eq!(self.health.snapshot().state, AgentState::Stopped);
    }
}
