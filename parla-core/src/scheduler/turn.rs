//! Taking turns at serving a queue without waiting: whoever asks for the queue to be served
//! either serves it or leaves the work to the thread serving it now.
//!
//! # Invariants
//! - One thread serves at a time (`serving` is taken by compare-and-swap).
//! - No request is lost: a request sets `again` and then tries to serve. The server clears
//!   `again` before it serves and reads it after it stopped serving; a request whose `again`
//!   the server's clearing did not see is either served by the server's next round (its
//!   read sees it) or by the requester itself (its compare-and-swap comes after the server
//!   let go). Checked by loom (`loom_test` below).
//! - Nobody blocks: a requester that finds the queue being served returns at once, so a
//!   request can be made from anywhere, even from inside a serve.

use crate::loom::sync::{AtomicBool, Ordering};

#[derive(Debug)]
pub(crate) struct Turn {
    serving: AtomicBool,
    again: AtomicBool,
}

impl Default for Turn {
    fn default() -> Self {
        Self::new()
    }
}

impl Turn {
    pub(crate) fn new() -> Self {
        Turn {
            serving: AtomicBool::new(false),
            again: AtomicBool::new(false),
        }
    }

    /// Runs `serve` (again and again while requests came in meanwhile), unless another
    /// thread is serving: then that thread runs it for this request.
    pub(crate) fn request(&self, mut serve: impl FnMut()) {
        self.again.store(true, Ordering::SeqCst);
        loop {
            if self
                .serving
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                return;
            }
            self.again.store(false, Ordering::SeqCst);
            serve();
            self.serving.store(false, Ordering::SeqCst);
            if !self.again.load(Ordering::SeqCst) {
                return;
            }
        }
    }
}

#[cfg(all(test, parla_loom))]
mod loom_test {
    use super::*;
    use crate::loom::sync::Queue;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;
    use loom::thread;

    /// Work pushed by two threads, each then asking for a serve, is all served. (The lost
    /// request without the re-check takes 4 preemptions to show: the bound is raised.)
    #[test]
    fn two_requests_are_both_served() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(6);
        b.check(|| {
            let turn = Arc::new(Turn::new());
            let queue = Arc::new(Queue::<u8>::new());
            let served = Arc::new(AtomicUsize::new(0));
            let serve = |q: &Queue<u8>, n: &AtomicUsize| {
                while q.pop().is_some() {
                    n.fetch_add(1, Ordering::SeqCst);
                }
            };
            let ts: Vec<_> = (0..2)
                .map(|i| {
                    let (turn, queue, served) = (turn.clone(), queue.clone(), served.clone());
                    thread::spawn(move || {
                        queue.push(i);
                        turn.request(|| serve(&queue, &served));
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
            assert_eq!(served.load(Ordering::SeqCst), 2);
        });
    }

    /// Work queued by a request made from inside a serve (whoever serves) is served too.
    #[test]
    fn a_request_from_inside_a_serve_is_served() {
        loom::model(|| {
            let turn = Arc::new(Turn::new());
            let queue = Arc::new(Queue::<u8>::new());
            let served = Arc::new(AtomicUsize::new(0));
            // Serving item 0 queues item 1 and asks for a serve, from inside the serve.
            fn serve(turn: &Turn, q: &Queue<u8>, n: &AtomicUsize) {
                while let Some(i) = q.pop() {
                    n.fetch_add(1, Ordering::SeqCst);
                    if i == 0 {
                        q.push(1);
                        turn.request(|| unreachable!("nested requests never serve"));
                    }
                }
            }
            queue.push(0);
            let t2 = {
                let (turn, queue, served) = (turn.clone(), queue.clone(), served.clone());
                thread::spawn(move || turn.request(|| serve(&turn, &queue, &served)))
            };
            turn.request(|| serve(&turn, &queue, &served));
            t2.join().unwrap();
            assert_eq!(served.load(Ordering::SeqCst), 2);
        });
    }
}
