//! Stop signals for a synchronous main loop: the consumer's transaction loop and the demo run on
//! plain threads and poll a stop flag; this tells them when SIGTERM or SIGINT (Ctrl-C) arrived.

/// Spawns a thread that waits for SIGTERM or SIGINT on a tokio runtime of its own, then calls
/// `then` once (e.g. to set the stop flag the caller polls). If the runtime or the handlers
/// cannot be set up, `then` is never called and the process stops only by other means.
pub fn on_shutdown_signal(then: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let received = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return false;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            true
        });
        if received {
            then();
        }
    });
}
