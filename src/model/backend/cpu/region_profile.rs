//! Where a forward pass's time goes between its parallel regions and the threads (feature `region-profile`,
//! a diagnostic): per region (the `parallel_for` call site), its wall time and each thread's time in its jobs.

use std::collections::BTreeMap;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const THREADS: usize = 8;

#[derive(Default, Clone)]
struct Totals {
    calls: u64,
    wall_ns: u64,
    busy_ns: [u64; THREADS],
    jobs: [u64; THREADS],
    /// Per thread, the sum over regions it took part in of how long after the region's start its first job
    /// started: a thread that joins late (asleep, descheduled) shows it here.
    join_ns: [u64; THREADS],
}

static REGIONS: Mutex<BTreeMap<(&'static str, u32), Totals>> = Mutex::new(BTreeMap::new());
static PASS_NS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds on a clock every thread shares.
pub fn now_ns() -> u64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
    #[cfg(target_arch = "wasm32")]
    {
        use wasm_bindgen::JsCast;
        thread_local! {
            static NOW: (wasm_bindgen::JsValue, js_sys::Function) = {
                let perf = js_sys::Reflect::get(&js_sys::global(), &"performance".into()).unwrap();
                let now = js_sys::Reflect::get(&perf, &"now".into()).unwrap().unchecked_into();
                (perf, now)
            };
        }
        NOW.with(|(perf, now)| (now.call0(perf).unwrap().as_f64().unwrap() * 1e6) as u64)
    }
}

fn thread() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    return rayon::current_thread_index().unwrap_or(THREADS - 1).min(THREADS - 1);
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    0
}

/// One `parallel_for` call: recorded when dropped.
pub struct Region {
    site: &'static Location<'static>,
    start: u64,
    busy: [AtomicU64; THREADS],
    jobs: [AtomicU64; THREADS],
    joined: [AtomicU64; THREADS],
}

impl Region {
    pub fn start(site: &'static Location<'static>) -> Self {
        Self { site, start: now_ns(), busy: Default::default(), jobs: Default::default(), joined: Default::default() }
    }

    /// Runs one job, adding its time to the thread that ran it.
    pub fn time(&self, job: impl FnOnce()) {
        let start = now_ns();
        let t = thread();
        if self.jobs[t].load(Ordering::Relaxed) == 0 {
            self.joined[t].store(start.saturating_sub(self.start), Ordering::Relaxed);
        }
        job();
        self.busy[t].fetch_add(now_ns() - start, Ordering::Relaxed);
        self.jobs[t].fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let wall = now_ns() - self.start;
        let mut regions = REGIONS.lock().unwrap_or_else(|e| e.into_inner());
        let t = regions.entry((self.site.file(), self.site.line())).or_default();
        t.calls += 1;
        t.wall_ns += wall;
        for i in 0..THREADS {
            t.busy_ns[i] += self.busy[i].load(Ordering::Relaxed);
            t.jobs[i] += self.jobs[i].load(Ordering::Relaxed);
            t.join_ns[i] += self.joined[i].load(Ordering::Relaxed);
        }
    }
}

pub fn pass<R>(op: impl FnOnce() -> R + Send) -> impl FnOnce() -> R + Send {
    move || {
        let t0 = now_ns();
        let r = op();
        PASS_NS.fetch_add(now_ns() - t0, Ordering::Relaxed);
        r
    }
}

/// Logs the report to the console when dropped: on the thread that called `on_pool`.
#[cfg(target_arch = "wasm32")]
pub struct LogOnDrop;

#[cfg(target_arch = "wasm32")]
impl Drop for LogOnDrop {
    fn drop(&mut self) {
        web_sys::console::log_1(&format!("region-profile\n{}", report(1)).into());
    }
}

/// The totals since the last report divided by `passes`, as a table; resets them.
pub fn report(passes: usize) -> String {
    let n = passes.max(1) as f64;
    let mut regions = std::mem::take(&mut *REGIONS.lock().unwrap_or_else(|e| e.into_inner()));
    for t in regions.values_mut() {
        t.calls = (t.calls as f64 / n).round() as u64;
        t.wall_ns = (t.wall_ns as f64 / n) as u64;
        t.busy_ns.iter_mut().for_each(|b| *b = (*b as f64 / n) as u64);
        t.join_ns.iter_mut().for_each(|b| *b = (*b as f64 / n) as u64);
        t.jobs.iter_mut().for_each(|b| *b = (*b as f64 / n).round() as u64);
    }
    let pass = PASS_NS.swap(0, Ordering::Relaxed) as f64 / n / 1e6;
    let wall: f64 = regions.values().map(|t| t.wall_ns as f64 / 1e6).sum();
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    let sleeps = super::team::SLEEPS.swap(0, Ordering::Relaxed) as f64 / n;
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    let sleeps = 0.0;
    let mut s = format!("passes {pass:.1} ms, regions {wall:.1} ms, outside regions {:.1} ms, team sleeps {sleeps:.1}\n", pass - wall);
    s += "site calls wall_ms busy_ms_per_thread jobs_per_thread joined_after_ms_per_thread\n";
    for ((file, line), t) in &regions {
        let used = (0..THREADS).filter(|&i| t.jobs[i] > 0).collect::<Vec<_>>();
        let busy: Vec<String> = used.iter().map(|&i| format!("{}:{:.1}", i, t.busy_ns[i] as f64 / 1e6)).collect();
        let jobs: Vec<String> = used.iter().map(|&i| format!("{}", t.jobs[i])).collect();
        let joined: Vec<String> = used.iter().map(|&i| format!("{:.2}", t.join_ns[i] as f64 / 1e6)).collect();
        s += &format!(
            "{file}:{line} {} {:.1} [{}] [{}] [{}]\n",
            t.calls,
            t.wall_ns as f64 / 1e6,
            busy.join(" "),
            jobs.join(" "),
            joined.join(" ")
        );
    }
    s
}
