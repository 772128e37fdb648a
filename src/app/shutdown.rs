//! One way to stop: SIGTERM (what Kubernetes sends) or Ctrl-C set a flag every task watches,
//! so `run` and `controller` finish the work in flight the same way.

use tokio::sync::watch;
use tracing::info;

/// The stop flag of a long-running command. Clone the receiver into each task; [`stopped`]
/// turns it into the future servers and loops take as their shutdown signal.
pub(crate) struct Shutdown {
    sender: watch::Sender<bool>,
}

impl Shutdown {
    /// A flag that is set on SIGTERM or SIGINT (and by [`Shutdown::trigger`]). The signal
    /// handlers are registered before this returns, so a signal sent once the command has
    /// said it runs is never lost to the default action (exit without cleanup).
    pub(crate) fn on_signals() -> Self {
        let (sender, _) = watch::channel(false);
        let on_signal = sender.clone();
        let signals = Signals::register();
        tokio::spawn(async move {
            signals.received().await;
            let _ = on_signal.send(true);
        });
        Shutdown { sender }
    }

    /// A receiver of the flag, for a task that must stop with the others.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.sender.subscribe()
    }

    /// Resolves once the flag is set.
    pub(crate) fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        stopped(self.subscribe())
    }

    /// Sets the flag: everything watching it stops (leadership lost, a task failed).
    pub(crate) fn trigger(&self) {
        let _ = self.sender.send(true);
    }
}

/// Resolves once the stop flag behind `rx` is set.
pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// SIGTERM and SIGINT handlers, registered when made.
struct Signals {
    #[cfg(unix)]
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let handlers = signal(SignalKind::terminate())
                .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
                .ok();
            Signals { handlers }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// Resolves on the first of the signals.
    async fn received(self) {
        #[cfg(unix)]
        {
            if let Some((mut term, mut interrupt)) = self.handlers {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM: finishing the work in flight"),
                    _ = interrupt.recv() => info!("interrupted: finishing the work in flight"),
                }
                return;
            }
        }
        let _ = tokio::signal::ctrl_c().await;
        info!("interrupted: finishing the work in flight");
    }
}
