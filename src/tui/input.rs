//! Terminal input as one awaitable source for the console's `select!`: crossterm's async event
//! stream, and the terminal's hang-up.
//!
//! crossterm alone cannot be trusted to end: on a terminal that has gone away its reader can
//! loop for ever (crossterm #793), so a hang-up is read from the terminal itself, by a thread
//! that waits on standard input for nothing but a hang-up (it never reads: crossterm stays the
//! only reader of the bytes). tokio's reactor could wait instead, but registering a descriptor
//! it does not own is `unsafe` in tokio 1.54, and the crate allows no unsafe code. An ended or
//! failing stream ends the console too.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::StreamExt as _;
use ratatui::crossterm::event as cevent;
use tokio::sync::oneshot;

use super::app::Event;

/// The terminal's keys, resizes and (with `--mouse`) wheel, and its end.
pub(super) struct TerminalInput {
    events: cevent::EventStream,
    /// Why the terminal hung up, once it has; `None` where nothing watches (standard input is
    /// not the terminal, crossterm reading `/dev/tty`) or the watch has ended.
    hang_up: Option<oneshot::Receiver<String>>,
}

impl TerminalInput {
    /// Starts reading; the hang-up watch ends when `stop` is set.
    pub(super) fn new(stop: Arc<AtomicBool>) -> Self {
        let hang_up = std::io::IsTerminal::is_terminal(&std::io::stdin())
            .then(|| spawn_hang_up_watch(stop))
            .flatten();
        Self {
            events: cevent::EventStream::new(),
            hang_up,
        }
    }

    /// The next event from the terminal. Cancel-safe: dropping the future loses nothing.
    pub(super) async fn next(&mut self) -> Event {
        loop {
            tokio::select! {
                event = self.events.next() => {
                    if let Some(event) = from_stream(event) {
                        return event;
                    }
                }
                why = hung_up(&mut self.hang_up) => return Event::TerminalGone(why),
            }
        }
    }

    /// An event crossterm already holds (a paste or a burst of keys arrives in one read), without
    /// waiting; `None` when it holds none.
    ///
    /// Polled with the console task's own context, not a dummy one: when crossterm holds nothing
    /// it starts its wake-up thread with the waker it is given, and keeps that waker until input
    /// comes, so a dummy waker would leave the console deaf until the next tick.
    pub(super) async fn pending(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| {
            loop {
                match self.events.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Ready(None),
                    Poll::Ready(item) => {
                        if let Some(event) = from_stream(item) {
                            return Poll::Ready(Some(event));
                        }
                    }
                }
            }
        })
        .await
    }
}

/// Resolves with the watch's word once the terminal has hung up; never while it has not, nor
/// where nothing watches.
async fn hung_up(watch: &mut Option<oneshot::Receiver<String>>) -> String {
    if let Some(rx) = watch.as_mut() {
        let said = rx.await;
        // A resolved receiver must not be awaited again.
        *watch = None;
        if let Ok(why) = said {
            return why;
        }
    }
    std::future::pending().await
}

/// Watches standard input for a hang-up on a thread of its own; `None` if it cannot start.
fn spawn_hang_up_watch(stop: Arc<AtomicBool>) -> Option<oneshot::Receiver<String>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("hang-up".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let fd = std::os::fd::AsFd::as_fd(&stdin);
            while !stop.load(Ordering::Relaxed) {
                if let Some(why) = hang_up_within(fd, 250) {
                    let _ = tx.send(why);
                    return;
                }
            }
        })
        .map_err(|e| tracing::warn!("cannot watch the terminal for a hang-up: {e}"))
        .ok()
        .map(|_| rx)
}

/// Waits up to `millis` for `fd` to hang up, fail or become invalid, and says which; `None` if it
/// has not. Asks for no events, so input arriving neither wakes it nor is taken.
fn hang_up_within(fd: BorrowedFd<'_>, millis: u16) -> Option<String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd, PollFlags::empty())];
    match poll(&mut fds, PollTimeout::from(millis)) {
        Ok(0) | Err(nix::errno::Errno::EINTR) => None,
        Ok(_) => {
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            revents
                .intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
                .then(|| format!("the terminal hung up ({revents:?})"))
        }
        Err(e) => Some(format!("cannot watch the terminal: {e}")),
    }
}

/// What one item of crossterm's stream is to the console; `None` for what it ignores.
fn from_stream(item: Option<std::io::Result<cevent::Event>>) -> Option<Event> {
    match item {
        None => Some(Event::TerminalGone("the terminal's input ended".into())),
        Some(Err(e)) => Some(Event::TerminalGone(format!(
            "cannot read the terminal: {e}"
        ))),
        Some(Ok(event)) => console_event(&event),
    }
}

/// The console's event for a terminal event; `None` for what it ignores.
fn console_event(event: &cevent::Event) -> Option<Event> {
    match *event {
        cevent::Event::Key(k) => Some(Event::Key(k)),
        cevent::Event::Resize(_, _) => Some(Event::Resize),
        // Only delivered with --mouse: the wheel moves like the arrow keys.
        cevent::Event::Mouse(m) => {
            let code = match m.kind {
                cevent::MouseEventKind::ScrollUp => cevent::KeyCode::Up,
                cevent::MouseEventKind::ScrollDown => cevent::KeyCode::Down,
                _ => return None,
            };
            Some(Event::Key(cevent::KeyEvent::new(
                code,
                cevent::KeyModifiers::NONE,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wheel_moves_like_the_arrows_and_clicks_are_ignored() {
        let wheel = |kind| {
            cevent::Event::Mouse(cevent::MouseEvent {
                kind,
                column: 3,
                row: 4,
                modifiers: cevent::KeyModifiers::NONE,
            })
        };
        let Some(Event::Key(up)) = console_event(&wheel(cevent::MouseEventKind::ScrollUp)) else {
            panic!("the wheel up is not a key");
        };
        assert_eq!(up.code, cevent::KeyCode::Up);
        let Some(Event::Key(down)) = console_event(&wheel(cevent::MouseEventKind::ScrollDown))
        else {
            panic!("the wheel down is not a key");
        };
        assert_eq!(down.code, cevent::KeyCode::Down);
        assert!(
            console_event(&wheel(cevent::MouseEventKind::Down(
                cevent::MouseButton::Left
            )))
            .is_none()
        );
        assert!(console_event(&cevent::Event::FocusGained).is_none());
    }

    #[test]
    fn an_ended_or_failing_stream_ends_the_console() {
        assert!(matches!(from_stream(None), Some(Event::TerminalGone(_))));
        let failed = from_stream(Some(Err(std::io::Error::from_raw_os_error(5))));
        let Some(Event::TerminalGone(why)) = failed else {
            panic!("a read error does not end the console");
        };
        assert!(why.contains("cannot read the terminal"), "{why}");
    }

    /// A hang-up of a real pseudo-terminal is seen, while input that arrives before it is
    /// neither taken for one nor read.
    #[test]
    fn a_pseudo_terminal_that_closes_is_a_hang_up() {
        use std::os::fd::AsFd as _;
        let pty = nix::pty::openpty(None, None).unwrap();
        // A line (the pseudo-terminal is in canonical mode), left unread by the watch.
        nix::unistd::write(pty.master.as_fd(), b"k\n").unwrap();
        assert_eq!(hang_up_within(pty.slave.as_fd(), 200), None);
        let mut line = [0u8; 2];
        assert_eq!(nix::unistd::read(pty.slave.as_fd(), &mut line), Ok(2));
        assert_eq!(&line, b"k\n");
        drop(pty.master);
        let why = hang_up_within(pty.slave.as_fd(), 5000).expect("no hang-up seen in 5 s");
        assert!(why.starts_with("the terminal hung up"), "{why}");
    }

    /// Once the watch has said its word, awaiting it again waits for ever instead of failing.
    #[test]
    fn a_hang_up_is_said_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = oneshot::channel();
            let mut watch = Some(rx);
            tx.send("gone".to_string()).unwrap();
            assert_eq!(hung_up(&mut watch).await, "gone");
            let again =
                tokio::time::timeout(std::time::Duration::from_millis(50), hung_up(&mut watch));
            assert!(again.await.is_err(), "a second wait resolved");
            // A watch that ended without a word is no hang-up either.
            let (tx, rx) = oneshot::channel::<String>();
            drop(tx);
            let mut ended = Some(rx);
            let waited =
                tokio::time::timeout(std::time::Duration::from_millis(50), hung_up(&mut ended));
            assert!(
                waited.await.is_err(),
                "an ended watch was taken for a hang-up"
            );
        });
    }
}
