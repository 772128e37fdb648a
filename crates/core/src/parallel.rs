//! Running one piece of CPU-bound work on every core, with plain scoped threads.
//!
//! Render and resolve split large sets over the cores the same way: how many threads a
//! set is worth, the calling thread taking a share itself, and a panic on any thread
//! surfacing on the caller. They use plain threads rather than the async runtime, so the
//! work runs the same on any executor (tests use a current-thread one) and cannot block
//! the runtime's workers.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Most threads used, whatever the machine (beyond, memory and the disk are the limit).
pub const MAX_THREADS: usize = 8;

/// How many threads `items` pieces of work are worth when each thread should get at least
/// `min_per_thread` of them (below that, starting a thread costs about what it saves):
/// at least 1, at most the available cores and [`MAX_THREADS`].
pub(crate) fn threads_for(items: usize, min_per_thread: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS)
        .min(items / min_per_thread.max(1))
        .max(1)
}

/// Runs `work(index, threads)` on `threads` threads, the calling thread being index 0,
/// and returns the results by index. A panic on any thread is resumed on the caller.
pub fn run<T: Send>(threads: usize, work: impl Fn(usize, usize) -> T + Sync) -> Vec<T> {
    let threads = threads.max(1);
    if threads == 1 {
        return vec![work(0, 1)];
    }
    let work = &work;
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads)
            .map(|index| scope.spawn(move || work(index, threads)))
            .collect();
        let mut results = Vec::with_capacity(threads);
        results.push(work(0, threads));
        results.extend(others.into_iter().map(wait));
        results
    })
}

/// Runs `other` on a thread of its own while the calling thread runs `own`, and returns
/// both results. A panic on that thread is resumed on the caller.
pub fn join<A: Send, B>(other: impl FnOnce() -> A + Send, own: impl FnOnce() -> B) -> (A, B) {
    std::thread::scope(|scope| {
        let other = scope.spawn(other);
        let own = own();
        (wait(other), own)
    })
}

/// A scoped thread's result, its panic resumed on the caller.
fn wait<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs `job(0)`, `job(1)`, … `job(jobs - 1)` on `threads` threads, handing the jobs out in
/// order as threads come free (so no thread idles while another has a long queue), and
/// returns every result with its job number, in job order. Once a job `fails`, jobs after
/// it are left undone: the jobs before it have all been handed out and finish, so the first
/// failure in job order is always among the results, as if the jobs ran one by one.
pub(crate) fn in_order<T: Send>(
    threads: usize,
    jobs: usize,
    job: impl Fn(usize) -> T + Sync,
    fails: impl Fn(&T) -> bool + Sync,
) -> Vec<(usize, T)> {
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(usize::MAX);
    let mut done: Vec<(usize, T)> = run(threads, |_, _| {
        let mut done = Vec::new();
        loop {
            let j = next.fetch_add(1, Ordering::Relaxed);
            if j >= jobs || j > failed.load(Ordering::Relaxed) {
                return done;
            }
            let result = job(j);
            if fails(&result) {
                failed.fetch_min(j, Ordering::Relaxed);
            }
            done.push((j, result));
        }
    })
    .into_iter()
    .flatten()
    .collect();
    done.sort_unstable_by_key(|(j, _)| *j);
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_by_thread_index() {
        let results = run(3, |index, threads| {
            (index, threads, std::thread::current().id())
        });
        assert_eq!(
            results.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
            [(0, 3), (1, 3), (2, 3)]
        );
        assert_eq!(
            results[0].2,
            std::thread::current().id(),
            "index 0 runs on the caller"
        );
        assert_ne!(results[1].2, results[0].2);
        assert_eq!(run(0, |index, threads| (index, threads)), [(0, 1)]);
    }

    #[test]
    fn jobs_come_back_in_order_and_stop_after_the_first_failure() {
        for threads in [1, 2, 4] {
            let all = in_order(threads, 100, |j| j * 2, |_| false);
            assert_eq!(all, (0..100).map(|j| (j, j * 2)).collect::<Vec<_>>());

            // Jobs 37 and 60 fail: 37 and everything before it is there, in order; of the
            // jobs after it, only those already handed out ran.
            let some = in_order(threads, 100, |j| j, |&j| j == 37 || j == 60);
            let first_failure = some.iter().position(|&(j, _)| j == 37 || j == 60);
            assert_eq!(first_failure, Some(37), "threads: {threads}");
            assert_eq!(
                some[..38].iter().map(|&(j, _)| j).collect::<Vec<_>>(),
                (0..38).collect::<Vec<_>>()
            );
            if threads == 1 {
                assert_eq!(some.len(), 38, "nothing runs after the failure");
            }
        }
    }

    #[test]
    fn small_sets_stay_on_one_thread() {
        assert_eq!(threads_for(0, 16), 1);
        assert_eq!(threads_for(31, 16), 1);
        assert!(threads_for(10_000, 16) <= MAX_THREADS);
        assert_eq!(threads_for(10, 0), threads_for(10, 1));
    }

    #[test]
    fn join_runs_one_side_on_another_thread() {
        let caller = std::thread::current().id();
        let (other, own) = join(
            || std::thread::current().id(),
            || std::thread::current().id(),
        );
        assert_eq!(own, caller);
        assert_ne!(other, caller);
    }

    #[test]
    #[should_panic(expected = "boom on the other thread")]
    fn a_panic_in_join_reaches_the_caller() {
        join(|| panic!("boom on the other thread"), || ());
    }

    #[test]
    #[should_panic(expected = "boom on 1")]
    fn a_panic_on_another_thread_reaches_the_caller() {
        run(2, |index, _| {
            if index == 1 {
                panic!("boom on {index}");
            }
        });
    }
}
