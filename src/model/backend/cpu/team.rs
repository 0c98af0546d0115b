//! The CPU backend's threads: `parallel_for` over a forward pass's parallel regions, and `on_pool`, which runs
//! a whole forward pass with a *team*: the pool's other threads stay with the pass from its first region to its
//! last, spinning between regions, instead of going to sleep after each one and being woken for the next.
//! In a browser a sleeping Web Worker takes ~0.1–0.3 ms to wake (`Atomics.wait` / `notify`), and a short
//! text's pass has ~75 regions of ~1–3 ms: the second worker joined each one late. (ONNX Runtime's pool
//! spins the same way.) Natively and in the threaded wasm build; in the single-threaded wasm build every
//! region runs its jobs one after another. A team thread that has spun for a while (100 µs natively) sleeps
//! until woken, so that on a machine with other busy processes it does not spin against a descheduled
//! teammate.

/// Runs `job(0..n)` on the pool's threads, each index once, and returns when all have run: on the pass's
/// team inside [`on_pool`], else on rayon's pool; one after another in the single-threaded wasm build. Jobs
/// must not depend on which thread runs them or in what order (each writes its own part of the output), so
/// results are the same for any number of threads.
#[cfg_attr(feature = "region-profile", track_caller)]
pub fn parallel_for(n: usize, job: impl Fn(usize) + Sync + Send) {
    #[cfg(feature = "region-profile")]
    let region = super::region_profile::Region::start(std::panic::Location::caller());
    #[cfg(feature = "region-profile")]
    let job = |j: usize| region.time(|| job(j));
    if n == 1 {
        return job(0);
    }
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        if team::run_on_current(n, &job) {
            return;
        }
        use rayon::prelude::*;
        (0..n).into_par_iter().with_max_len(1).for_each(job);
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    (0..n).for_each(job);
}

/// Runs `op` (a forward pass) on one of the pool's threads with the others as its team, waiting for it:
/// each `parallel_for` inside it starts at once on every thread. Natively and in the threaded wasm build;
/// here otherwise.
pub fn on_pool<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "region-profile")]
    let op = super::region_profile::pass(op);
    #[cfg(all(feature = "region-profile", target_arch = "wasm32"))]
    let _log = super::region_profile::LogOnDrop;
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    return team::lead(op);
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    op()
}

/// `job(range)` over `0..n` cut into ranges of `per_job` (the last one shorter), on [`parallel_for`].
#[cfg_attr(feature = "region-profile", track_caller)]
pub fn parallel_ranges(n: usize, per_job: usize, job: impl Fn(std::ops::Range<usize>) + Sync + Send) {
    parallel_for(n.div_ceil(per_job), |j| job(j * per_job..((j + 1) * per_job).min(n)));
}

/// The threads `parallel_for` runs on: rayon's pool (1 until the page starts one in the threaded wasm build).
pub fn threads() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    return rayon::current_num_threads();
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    1
}

#[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
mod team {
    use std::any::Any;
    use std::cell::Cell;
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    type Job<'a> = &'a (dyn Fn(usize) + Sync);

    /// `state`'s fields: the region's generation (bits 40–63), its job count (20–39), the next job to claim
    /// (0–19). One word, so a claim is one compare-exchange that fails for a thread still holding an
    /// earlier region's generation.
    const FIELD: u64 = (1 << 20) - 1;
    pub(super) const MAX_JOBS: usize = FIELD as usize;

    pub struct Team {
        state: AtomicU64,
        /// The region's job: a pointer to a `Job` on the leader's stack, valid while the region runs.
        job: AtomicPtr<Job<'static>>,
        /// Jobs of the region finished (by any thread).
        done: AtomicUsize,
        finished: AtomicBool,
        panic: Mutex<Option<Box<dyn Any + Send>>>,
        parking: Parking,
    }

    /// Natively, how long a team thread spins for what it waits for (a region's last job, the next region)
    /// before it sleeps: about as long as a job takes, so that on an idle machine a thread rarely sleeps, but
    /// short, so that on a busy one (more runnable threads than cores) a thread waiting for a teammate the OS
    /// has descheduled soon gives its core up. Spinning without end, two threads on a 2-core machine beside
    /// one other busy process ran a text 2.4–2.8× slower than alone; sleeping after 100 µs, 2.1–2.3× (after
    /// 30 µs, the idle machine slowed; BENCHMARKS.md).
    #[cfg(not(target_arch = "wasm32"))]
    const SPIN: std::time::Duration = std::time::Duration::from_micros(100);
    /// In wasm, spins before sleeping: a count, since std has no clock on wasm32-unknown-unknown; longer than
    /// natively because a Web Worker woken from `Atomics.wait` takes 0.1–0.3 ms (2¹⁹ spins of this loop's shape
    /// take ~0.18 ms in V8; 2²² slept less but was no faster: BENCHMARKS.md). Beside one busy process,
    /// sleeping after this many took a 2-thread page's 52-token text from 326 to 208 ms; idle, no change.
    #[cfg(target_arch = "wasm32")]
    const SPINS: u32 = 1 << 19;

    /// Team threads that went to sleep, and sleeps that ended by the safety timeout although what they waited
    /// for had happened (a wake that did not come): for the tests (and sleeps for the region profile).
    #[cfg(any(test, feature = "region-profile"))]
    pub(crate) static SLEEPS: AtomicUsize = AtomicUsize::new(0);
    #[cfg(test)]
    pub(super) static WAKES_MISSED: AtomicUsize = AtomicUsize::new(0);

    /// Where team threads that have spun long enough sleep until what they wait for happens.
    #[derive(Default)]
    struct Parking {
        /// Threads asleep or about to be: a waker takes the lock only when there are some.
        sleepers: AtomicUsize,
        lock: Mutex<()>,
        woken: Condvar,
    }

    impl Parking {
        /// Returns once `ready()`, which becomes true by a `SeqCst` store followed by [`Parking::wake`]:
        /// spinning first (`SPIN` natively, `SPINS` in wasm), then asleep.
        fn wait_until(&self, ready: impl Fn() -> bool) {
            #[cfg(not(target_arch = "wasm32"))]
            let start = std::time::Instant::now();
            let mut spins = 0u32;
            while !ready() {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                #[cfg(not(target_arch = "wasm32"))]
                if spins % 64 == 0 && start.elapsed() >= SPIN {
                    return self.sleep_until(ready);
                }
                #[cfg(target_arch = "wasm32")]
                if spins == SPINS {
                    return self.sleep_until(ready);
                }
            }
        }

        fn sleep_until(&self, ready: impl Fn() -> bool) {
            // Counted before `ready` is read again: a waker that made it true either sees this count and
            // wakes under the lock, or made it true before the read below (both SeqCst), so no wake is lost.
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            #[cfg(any(test, feature = "region-profile"))]
            SLEEPS.fetch_add(1, Ordering::Relaxed);
            while !ready() {
                // The timeout only bounds the damage of a wake this reasoning missed.
                let (woken, _timeout) =
                    self.woken.wait_timeout(guard, std::time::Duration::from_millis(5)).unwrap_or_else(|e| e.into_inner());
                guard = woken;
                #[cfg(test)]
                if _timeout.timed_out() && ready() {
                    WAKES_MISSED.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(guard);
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
        }

        /// After the `SeqCst` store that makes a sleeper's `ready()` true.
        fn wake(&self) {
            if self.sleepers.load(Ordering::SeqCst) > 0 {
                let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.woken.notify_all();
            }
        }
    }

    thread_local! {
        /// The team this thread leads, while it runs a pass and is not inside one of its regions.
        static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
    }

    impl Team {
        fn new() -> Self {
            Self {
                state: AtomicU64::new(0),
                job: AtomicPtr::new(std::ptr::null_mut()),
                done: AtomicUsize::new(0),
                finished: AtomicBool::new(false),
                panic: Mutex::new(None),
                parking: Parking::default(),
            }
        }

        /// The next job of region `generation`, if it has one left, and the region's job count.
        fn claim(&self, generation: u64) -> Option<(usize, usize)> {
            let mut state = self.state.load(Ordering::Acquire);
            loop {
                let jobs = (state >> 20) & FIELD;
                if state >> 40 != generation || state & FIELD >= jobs {
                    return None;
                }
                match self.state.compare_exchange_weak(state, state + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Some(((state & FIELD) as usize, jobs as usize)),
                    Err(now) => state = now,
                }
            }
        }

        /// Runs `job` for each claimed index of region `generation`, counting each as done even when it
        /// panics (the panic is kept for the leader), so the leader never waits for a job that will not end.
        fn work(&self, generation: u64, job: impl Fn() -> Job<'static>) {
            while let Some((index, jobs)) = self.claim(generation) {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| job()(index))) {
                    self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(panic);
                }
                if self.done.fetch_add(1, Ordering::SeqCst) + 1 == jobs {
                    // The region's last job: the leader may be asleep waiting for it.
                    self.parking.wake();
                }
            }
        }

        /// The leader's side of one region: publish it, take part, wait until every job has run.
        fn run(&self, n: usize, job: Job<'_>) {
            // SAFETY: the pointer is read only by threads that claimed one of this region's jobs, and this
            // function returns only after every claimed job has finished.
            let job: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(job) };
            self.job.store(&job as *const Job<'static> as *mut Job<'static>, Ordering::Relaxed);
            self.done.store(0, Ordering::Relaxed);
            let generation = ((self.state.load(Ordering::Relaxed) >> 40) + 1) & ((1 << 24) - 1);
            self.state.store(generation << 40 | (n as u64) << 20, Ordering::SeqCst);
            self.parking.wake();
            self.work(generation, || job);
            self.parking.wait_until(|| self.done.load(Ordering::SeqCst) >= n);
            if let Some(panic) = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
                resume_unwind(panic);
            }
        }

        /// A helper's side: run the jobs of every region published until the pass is over.
        fn help(&self) {
            let mut seen = 0;
            loop {
                self.parking.wait_until(|| self.finished.load(Ordering::SeqCst) || self.state.load(Ordering::SeqCst) >> 40 != seen);
                if self.finished.load(Ordering::SeqCst) {
                    return;
                }
                let generation = self.state.load(Ordering::Acquire) >> 40;
                seen = generation;
                // SAFETY: read only after claiming a job of the region it belongs to (see `run`).
                self.work(generation, || unsafe { *self.job.load(Ordering::Acquire) });
            }
        }
    }

    /// Runs `n` jobs on the team this thread leads, if it leads one (not from inside a region's job):
    /// returns false otherwise, or when `n` is beyond what the state word counts.
    pub fn run_on_current(n: usize, job: &(dyn Fn(usize) + Sync)) -> bool {
        let team = LEADING.with(Cell::get);
        if team.is_null() || n > MAX_JOBS {
            return false;
        }
        // Jobs that start regions of their own run them on rayon's pool instead.
        LEADING.with(|l| l.set(std::ptr::null()));
        let restore = Restore(team);
        // SAFETY: `team` outlives the pass that set it, and this call is inside that pass.
        unsafe { &*team }.run(n, job);
        drop(restore);
        true
    }

    /// Puts the team back as this thread's when dropped (after a region, and if a job panicked).
    struct Restore(*const Team);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEADING.with(|l| l.set(self.0));
        }
    }

    /// Runs `op` on a pool thread that leads the pool's other threads as its team.
    pub fn lead<R: Send>(op: impl FnOnce() -> R + Send) -> R {
        let team = Team::new();
        rayon::scope(|scope| {
            let helpers = rayon::current_num_threads().saturating_sub(1);
            if helpers == 0 || !LEADING.with(Cell::get).is_null() {
                return op();
            }
            for _ in 0..helpers {
                scope.spawn(|_| team.help());
            }
            // Whatever `op` does, the helpers are let go and this thread leads no more when it ends.
            struct Finish<'a>(&'a Team);
            impl Drop for Finish<'_> {
                fn drop(&mut self) {
                    self.0.finished.store(true, Ordering::SeqCst);
                    self.0.parking.wake();
                    LEADING.with(|l| l.set(std::ptr::null()));
                }
            }
            let _finish = Finish(&team);
            LEADING.with(|l| l.set(&team));
            op()
        })
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::{on_pool, parallel_for};
    use super::team::{SLEEPS, WAKES_MISSED};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    /// Counts how often each index of `n` ran.
    fn run_counted(n: usize) -> Vec<usize> {
        let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        parallel_for(n, |i| {
            counts[i].fetch_add(1, Ordering::Relaxed);
        });
        counts.into_iter().map(AtomicUsize::into_inner).collect()
    }

    #[test]
    fn every_job_runs_once_in_every_region_of_a_pass() {
        for threads in [1, 2, 3, 4] {
            pool(threads).install(|| {
                on_pool(|| {
                    // Many short regions back to back: a helper still busy with one region's last claim
                    // must not take a job of the next (each region's jobs are counted separately).
                    for region in 0..3000 {
                        let n = [0, 1, 2, 3, 7, 64, 197][region % 7];
                        assert_eq!(run_counted(n), vec![1; n], "{threads} threads, region {region}");
                    }
                    // Beyond the team's job counter: rayon runs it.
                    assert!(run_counted(super::team::MAX_JOBS + 5).iter().all(|&c| c == 1));
                });
                // Outside a pass too.
                assert_eq!(run_counted(50), vec![1; 50]);
            });
        }
    }

    #[test]
    fn every_thread_takes_part_in_a_pass() {
        pool(2).install(|| {
            on_pool(|| {
                let seen: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
                // Jobs long enough that the first thread cannot take them all before the helper arrives.
                for _ in 0..20 {
                    parallel_for(64, |_| {
                        seen[rayon::current_thread_index().unwrap()].fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    });
                }
                assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) > 0), "a thread ran no job");
            })
        });
    }

    #[test]
    fn regions_inside_jobs_and_passes_inside_passes_run() {
        pool(2).install(|| {
            on_pool(|| {
                let total = AtomicUsize::new(0);
                parallel_for(8, |_| {
                    parallel_for(5, |_| {
                        total.fetch_add(1, Ordering::Relaxed);
                    });
                });
                assert_eq!(total.load(Ordering::Relaxed), 40);
                assert_eq!(on_pool(|| run_counted(9)), vec![1; 9]);
            })
        });
    }

    #[test]
    fn a_panicking_job_ends_the_pass_with_its_panic_and_the_pool_still_works() {
        let pool = pool(2);
        for _ in 0..20 {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.install(|| {
                    on_pool(|| {
                        parallel_for(32, |i| {
                            if i == 17 {
                                panic!("job 17 failed");
                            }
                        })
                    })
                })
            }));
            let message = result.expect_err("the panic reaches the caller");
            assert_eq!(message.downcast_ref::<&str>(), Some(&"job 17 failed"));
        }
        assert_eq!(pool.install(|| on_pool(|| run_counted(33))), vec![1; 33]);
    }

    /// Jobs and gaps between regions longer than the team's spin, so that in every region the leader sleeps
    /// waiting for the helper's last job and the helper sleeps waiting for the next region: both must be
    /// woken — not left to the safety timeout —, every job run once.
    #[test]
    fn team_threads_that_sleep_are_woken() {
        let (sleeps, missed) = (SLEEPS.load(Ordering::Relaxed), WAKES_MISSED.load(Ordering::Relaxed));
        let helped = AtomicUsize::new(0);
        pool(2).install(|| {
            on_pool(|| {
                let leader = rayon::current_thread_index();
                for region in 0..30 {
                    let counts: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
                    let helper_jobs = AtomicUsize::new(0);
                    parallel_for(4, |i| {
                        // The helper's job outlasts the leader's other jobs and its spin.
                        let on_leader = rayon::current_thread_index() == leader;
                        if !on_leader {
                            helper_jobs.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(std::time::Duration::from_micros(if on_leader { 300 } else { 2000 }));
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                    assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "region {region}");
                    if helper_jobs.into_inner() > 0 {
                        helped.fetch_add(1, Ordering::Relaxed);
                    }
                    // The leader busy alone between regions.
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        });
        // Other tests' passes may sleep too (counted as well); a wake racing the timeout is rare, a wake that
        // is never sent is one per sleep of its kind.
        let (sleeps, missed) = (SLEEPS.load(Ordering::Relaxed) - sleeps, WAKES_MISSED.load(Ordering::Relaxed) - missed);
        assert!(sleeps >= 30, "the team slept {sleeps} times: the test no longer makes it sleep");
        assert!(missed * 10 <= sleeps, "{missed} of {sleeps} sleeps ended by the timeout, not by a wake");
        // Woken when a region is published, the helper takes a job while the leader runs its first (300 µs).
        let helped = helped.into_inner();
        assert!(helped >= 15, "the helper ran jobs of {helped} of 30 regions: it was not woken for them");
    }

    #[test]
    fn passes_from_several_threads_at_once_all_finish() {
        let pool = pool(2);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let counts = pool.install(|| on_pool(|| (0..10).map(|_| run_counted(40)).collect::<Vec<_>>()));
                        assert!(counts.iter().all(|c| c == &vec![1; 40]));
                    }
                });
            }
        });
    }
}
