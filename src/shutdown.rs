//! Shutdown as a value: a watch channel every task can await. SIGTERM and SIGINT map onto
//! it; tests trigger it directly.

use tokio::sync::watch;

/// The sending half, held by whoever decides to stop.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<bool>);

/// The receiving half, cloned into every task that must stop.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// A shutdown that never fires (one-shot commands that run to completion).
    pub fn never() -> Shutdown {
        let (_tx, rx) = watch::channel(false);
        Shutdown(rx)
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is triggered (at once if it already was).
    pub async fn wait(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            // The trigger is gone without firing: nothing can stop us any more.
            std::future::pending::<()>().await;
        }
    }
}

/// Fires `trigger` on SIGTERM or SIGINT. The handlers are registered before this returns,
/// so a signal during start-up is never the default "terminate now".
#[cfg(unix)]
pub fn on_signals(trigger: Trigger) {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; stop with SIGKILL");
            return;
        }
    };
    tokio::spawn(async move {
        let (mut term, mut int) = (term, int);
        let signal = tokio::select! {
            _ = term.recv() => {
                crate::defects::on_sigterm();
                "SIGTERM"
            }
            _ = int.recv() => "SIGINT",
        };
        // Fire before logging: with stderr gone (a closed pipe), the log call can panic
        // this task (tracing-subscriber reports its own write error with `eprintln!`), and
        // the process must stop all the same.
        trigger.fire();
        tracing::info!(signal, "{signal} received: shutting down");
    });
}

#[cfg(not(unix))]
pub fn on_signals(trigger: Trigger) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received: shutting down");
            trigger.fire();
        }
    });
}
