//! A spinner for the commands that talk to a backend once: shown on stderr, when it is a
//! terminal, only if the command is still waiting after a second (a server that is slow to
//! answer, a connection being retried), and cleared when it ends.

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget};

/// How long a command runs before its spinner shows.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// Runs `work`, with a spinner saying `what` once it has taken longer than a second.
pub(crate) async fn while_waiting<F: Future>(what: &str, work: F) -> F::Output {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    spin_after(what, QUIET_FOR, target, work).await
}

/// Runs `work`; if it takes longer than `quiet_for`, shows a spinner on `target` until it ends.
async fn spin_after<F: Future>(
    what: &str,
    quiet_for: Duration,
    target: ProgressDrawTarget,
    work: F,
) -> F::Output {
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => return out,
        () = tokio::time::sleep(quiet_for) => {}
    }
    let spinner = ProgressBar::with_draw_target(None, target).with_message(format!("{what}…"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let out = work.await;
    spinner.finish_and_clear();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_work_is_awaited_to_its_end_with_or_without_a_spinner() {
        let quiet_for = Duration::from_millis(10);
        let quick = spin_after("quick", quiet_for, ProgressDrawTarget::hidden(), async { 1 }).await;
        assert_eq!(quick, 1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let slow = spin_after("slow", quiet_for, ProgressDrawTarget::hidden(), async {
            tokio::time::sleep(quiet_for * 5).await;
            tx.send(()).unwrap();
            2
        })
        .await;
        assert_eq!(slow, 2);
        assert!(rx.await.is_ok(), "the work ran to its end past the spinner's delay");
    }
}
