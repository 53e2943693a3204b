//! The graph as a state machine, with no runtime: wiring, cascades, placeholders, waiters,
//! the join protocol.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use super::arc::{TaskArc, TaskPtr};
use super::cell::{Join, TaskCell};
use super::node::{Dependent, Header, Kind, Name, Placeholder, vt_of};
use super::*;
use crate::key::IntoKey;

const RT: u32 = 7;

fn cell<F>(n: u64, fut: F) -> TaskArc<TaskCell<F>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let h = Header::new(
        vt_of::<TaskCell<F>>(),
        Name::Anon(n),
        Kind::Task,
        RT,
        1,
        0,
        0,
    );
    TaskArc::new(TaskCell::new(h, fut, ()))
}

fn node(n: u64) -> TaskPtr {
    cell(n, async {}).into_task()
}

fn run(t: &TaskPtr) -> Outcome {
    let mut cx = Context::from_waker(Waker::noop());
    // SAFETY: the test is the only holder of the task; it never ran.
    match unsafe { t.poll_body(&mut cx) } {
        Poll::Ready(o) => o,
        Poll::Pending => panic!("test bodies finish in one poll"),
    }
}

#[test]
fn a_chain_becomes_ready_link_by_link() {
    let (a, b, c) = (node(0), node(1), node(2));
    assert_eq!(wire(&a, None, []), Ok(true));
    assert_eq!(wire(&b, None, [a.clone()]), Ok(false));
    assert_eq!(wire(&c, None, [b.clone()]), Ok(false));
    let mut fx = Effects::default();
    let o = run(&a);
    finish(&a, o, &mut fx);
    assert_eq!(fx.ready.len(), 1);
    assert!(TaskArc::ptr_eq(&fx.ready[0], &b));
    assert!(c.header().is_waiting());
    // A dependency that finished before the wiring counts at once.
    let d = node(3);
    assert_eq!(wire(&d, None, [a.clone()]), Ok(true));
}

#[test]
fn a_failure_cascades_without_recursion() {
    let head = node(0);
    assert_eq!(wire(&head, None, []), Ok(true));
    let mut prev = head.clone();
    let mut all = Vec::new();
    for i in 1..100_000 {
        let t = node(i);
        assert_eq!(wire(&t, None, [prev.clone()]), Ok(false));
        all.push(t.clone());
        prev = t;
    }
    let mut fx = Effects::default();
    let err = Arc::new(crate::TaskError::NoRuntime { task: "#0".into() });
    finish(&head, Err(err), &mut fx);
    assert_eq!(fx.unrun, 99_999);
    assert!(fx.ready.is_empty());
    match all.last().unwrap().header().outcome() {
        Some(Err(e)) => match &*e {
            crate::TaskError::DependencyFailed { dependency, .. } => assert_eq!(dependency, "#0"),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn wiring_rejects_itself_failed_dependencies_and_other_runtimes() {
    let a = node(0);
    assert!(matches!(
        wire(&a, None, [a.clone()]),
        Err(crate::TaskError::Cycle { .. })
    ));
    let failed = node(1);
    let mut fx = Effects::default();
    assert!(fail_unrun(
        &failed,
        crate::TaskError::NoRuntime { task: "#1".into() },
        &mut fx
    ));
    assert!(!fail_unrun(
        &failed,
        crate::TaskError::NoRuntime { task: "#1".into() },
        &mut fx
    ));
    let b = node(2);
    assert!(matches!(
        wire(&b, None, [failed]),
        Err(crate::TaskError::DependencyFailed { .. })
    ));
    let foreign: TaskPtr = TaskArc::new(Placeholder::new(Name::Anon(9), RT + 1, None)).into_task();
    let c = node(3);
    assert!(matches!(
        wire(&c, None, [foreign]),
        Err(crate::TaskError::WrongRuntime { .. })
    ));
}

#[test]
fn a_placeholder_mirrors_the_task_spawned_under_its_id() {
    let key = 5.into_key();
    let p: TaskPtr = TaskArc::new(Placeholder::new(
        Name::Id(Arc::new("T".to_string()), key),
        RT,
        None,
    ))
    .into_task();
    let waiting = node(1);
    assert_eq!(wire(&waiting, None, [p.clone()]), Ok(false));
    let waiter = Arc::new(atomic_waker::AtomicWaker::new());
    waiter.register(Waker::noop());
    assert!(
        p.header()
            .add_dependent(Dependent::Waiter(waiter))
            .is_none()
    );
    // The task spawned under the id: its placeholder follows it.
    let t = node(2);
    assert!(
        t.header()
            .add_dependent(Dependent::Task(p.clone()))
            .is_none()
    );
    assert!(matches!(
        wire(&t, Some(&p), [p.clone()]),
        Err(crate::TaskError::Cycle { .. })
    ));
    let t = node(3);
    assert!(
        t.header()
            .add_dependent(Dependent::Task(p.clone()))
            .is_none()
    );
    assert_eq!(wire(&t, Some(&p), []), Ok(true));
    let mut fx = Effects::default();
    let o = run(&t);
    finish(&t, o, &mut fx);
    assert_eq!(p.header().outcome(), Some(Ok(())));
    assert!(TaskArc::ptr_eq(&fx.ready[0], &waiting));
    assert_eq!(fx.wake.len(), 1, "the placeholder's waiter");
}

#[test]
fn a_dropped_await_leaves_no_waiter() {
    let a = node(0);
    let w = Arc::new(atomic_waker::AtomicWaker::new());
    assert!(
        a.header()
            .add_dependent(Dependent::Waiter(w.clone()))
            .is_none()
    );
    assert!(a.header().has_dependents());
    a.header().remove_waiter(&w);
    assert!(!a.header().has_dependents());
}

struct Counted(Arc<AtomicUsize>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_output_is_dropped_once_whoever_goes_last() {
    for handle_first in [true, false] {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = drops.clone();
        let c = cell(0, async move { Counted(d) });
        let t: TaskPtr = c.clone().into_task();
        assert_eq!(wire(&t, None, []), Ok(true));
        if handle_first {
            assert!(!t.header().join_drop(), "not complete yet");
        }
        let o = run(&t);
        finish(&t, o, &mut Effects::default());
        if handle_first {
            assert_eq!(drops.load(Ordering::SeqCst), 1, "the completer dropped it");
        } else {
            assert_eq!(drops.load(Ordering::SeqCst), 0, "kept for the handle");
            assert!(t.header().join_drop());
            // SAFETY: the join protocol gave the output to this (handle) side.
            let v = unsafe { c.take_output() };
            assert!(v.is_some());
            drop(v);
            assert_eq!(drops.load(Ordering::SeqCst), 1);
        }
    }
}

#[test]
fn cycles_through_forward_references_are_found() {
    let pa: TaskPtr = TaskArc::new(Placeholder::new(Name::Anon(10), RT, None)).into_task();
    let pb: TaskPtr = TaskArc::new(Placeholder::new(Name::Anon(11), RT, None)).into_task();
    // a after b (a forward reference), b after a.
    let a = node(0);
    assert!(
        a.header()
            .add_dependent(Dependent::Task(pa.clone()))
            .is_none()
    );
    assert_eq!(wire(&a, Some(&pa), [pb.clone()]), Ok(false));
    let b = node(1);
    assert!(
        b.header()
            .add_dependent(Dependent::Task(pb.clone()))
            .is_none()
    );
    assert_eq!(wire(&b, Some(&pb), [pa.clone()]), Ok(false));
    let cycles = find_cycles(&[pa.clone(), pb.clone()]);
    assert_eq!(cycles.len(), 1);
    assert_eq!(cycles[0].len(), 4);
    assert!(find_cycles(&[node(5)]).is_empty());
}

/// A list consumed in part, or held on the heap, still drops what it holds: no reference
/// leaks when the inline drop is skipped, whether the items were all taken or not.
#[test]
fn lists_and_links_drop_what_they_still_hold() {
    use smallvec::SmallVec;
    let t = node(0);
    for len in 0..5 {
        for taken in 0..=len {
            let v: SmallVec<[TaskPtr; 2]> = (0..len).map(|_| t.clone()).collect();
            let mut it = node::Consume::new(v);
            for _ in 0..taken {
                assert!(it.next().is_some());
            }
            assert_eq!(it.len(), len - taken);
            drop(it);
            assert_eq!(TaskArc::strong_count(&t), 1, "{len} items, {taken} taken");
        }
    }
    // The dependents of a node, taken by a publication (in part) or dropped with the node.
    for n in 0..5 {
        let d = node(2);
        let (a, b) = (node(1), node(3));
        for x in [&a, &b] {
            for _ in 0..n {
                assert!(matches!(
                    x.header().add_task_dependent(&d),
                    node::Added::Registered
                ));
            }
        }
        assert_eq!(TaskArc::strong_count(&d), 1 + 2 * n);
        drop(b);
        assert_eq!(TaskArc::strong_count(&d), 1 + n, "dropped with its node");
        let mut taken = a.header().publish(Ok(())).dependents.into_iter();
        let _ = taken.next();
        drop(taken);
        assert_eq!(TaskArc::strong_count(&d), 1, "{n} dependents, one taken");
    }
    // A failed node's error goes with the node.
    let a = node(4);
    let err = Arc::new(TaskError::Cancelled {
        task: "a".to_string(),
    });
    let _ = a.header().publish(Err(err.clone()));
    assert_eq!(Arc::strong_count(&err), 2);
    drop(a);
    assert_eq!(Arc::strong_count(&err), 1, "dropped with its node");
}

/// A finished task's allocation is handed out for a new cell only when that cell has its
/// size and alignment and nothing else refers to the task; what it held is dropped first,
/// and the new cell written there runs as any other.
#[test]
fn a_finished_task_s_memory_is_reused_only_by_a_cell_of_its_size_and_only_when_unshared() {
    use std::mem::MaybeUninit;
    use std::pin::Pin;

    use super::cell::reuse_as;

    /// A future that counts its drops.
    struct Holds(Arc<AtomicUsize>);
    impl Drop for Holds {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    impl Future for Holds {
        type Output = usize;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
            Poll::Ready(1)
        }
    }
    /// A future of the same size.
    struct Same(usize);
    impl Future for Same {
        type Output = usize;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
            Poll::Ready(self.0)
        }
    }
    type Larger = TaskCell<std::future::Ready<[usize; 4]>>;
    assert_eq!(size_of::<TaskCell<Holds>>(), size_of::<TaskCell<Same>>());
    assert_ne!(size_of::<TaskCell<Holds>>(), size_of::<Larger>());

    let drops = Arc::new(AtomicUsize::new(0));
    let t: TaskPtr = cell(0, Holds(drops.clone())).into_task();
    // Another size: handed back whole.
    let t = reuse_as::<Larger>(t)
        .map(drop)
        .expect_err("a cell of another size");
    // Another reference to it: handed back whole.
    let other = t.clone();
    let t = reuse_as::<TaskCell<Same>>(t)
        .map(drop)
        .expect_err("a shared task");
    drop(other);
    assert_eq!(drops.load(Ordering::SeqCst), 0);

    // The same size and alignment, the one reference: emptied (its future dropped), and
    // its memory taken by the new cell.
    let at = TaskArc::as_ptr(&t).cast::<u8>();
    let place: TaskArc<MaybeUninit<TaskCell<Same>>> =
        reuse_as(t).ok().expect("a cell of the same size");
    assert_eq!(
        drops.load(Ordering::SeqCst),
        1,
        "the old future was not dropped"
    );
    let header = |h: &mut MaybeUninit<Header>| {
        h.write(Header::new(
            vt_of::<TaskCell<Same>>(),
            Name::Anon(1),
            Kind::Task,
            RT,
            1,
            0,
            0,
        ));
    };
    let new = TaskCell::new_arc(Some(place), header, Same(7), ());
    assert_eq!(
        TaskArc::as_ptr(&new).cast::<u8>(),
        at,
        "not the same memory"
    );
    let t: TaskPtr = new.clone().into_task();
    assert_eq!(run(&t), Ok(()));
    drop(t);
    let new: TaskArc<dyn Join<usize>> = new.into_join();
    // SAFETY: the one reader of the output, after the poll that stored it.
    assert_eq!(unsafe { new.take_output() }, Some(7));
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}
