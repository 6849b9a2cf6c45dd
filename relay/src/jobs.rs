//! Periodic jobs of `relay serve` (the mail worker, the reminders): each starts at a random offset
//! within its interval, so a fleet of relays started together does not fire together, then runs
//! every interval. On shutdown no new run starts; a run under way finishes (the mail worker stops
//! after the delivery it is making), bounded by a grace period.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// Tells jobs that the process is stopping. Cloned into every job that wants to stop early.
#[derive(Clone, Debug)]
pub struct Shutdown(Option<watch::Receiver<bool>>);

impl Shutdown {
    /// A signal that never fires: for running a job by hand (tests, one-shot commands).
    pub fn never() -> Self {
        Self(None)
    }

    pub fn is_triggered(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|rx| *rx.borrow() || rx.has_changed().is_err())
    }

    /// Resolves once shutdown is triggered (or the runner is gone); never for [`Shutdown::never`].
    pub async fn triggered(&mut self) {
        let Some(rx) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The running periodic jobs.
pub struct Jobs {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Jobs {
    fn default() -> Self {
        Self::new()
    }
}

impl Jobs {
    pub fn new() -> Self {
        Self {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    pub fn shutdown_signal(&self) -> Shutdown {
        Shutdown(Some(self.stop.subscribe()))
    }

    /// Runs `job` first at a random offset in `[0, every)`, then every `every` (a run that takes
    /// longer delays the next; runs never overlap). A run that panics is logged and the schedule
    /// goes on.
    pub fn spawn_periodic<F, Fut>(&mut self, name: &'static str, every: Duration, mut job: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let every = every.max(Duration::from_millis(1));
        let offset = random_offset(every);
        let mut stop = self.shutdown_signal();
        tracing::debug!(
            job = name,
            every_ms = every.as_millis() as u64,
            offset_ms = offset.as_millis() as u64,
            "job scheduled"
        );
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + offset, every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = stop.triggered() => break,
                    _ = ticks.tick() => {}
                }
                if let Err(e) = tokio::spawn(job()).await
                    && e.is_panic()
                {
                    tracing::error!(
                        job = name,
                        "periodic job panicked; it runs again at its next time"
                    );
                }
                if stop.is_triggered() {
                    break;
                }
            }
            tracing::debug!(job = name, "job stopped");
        });
        self.tasks.push((name, task));
    }

    /// Stops scheduling, lets the runs under way finish for at most `grace`, then aborts them.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + grace;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(job = name, "job did not stop in time; aborted");
                task.abort();
            }
        }
    }
}

fn random_offset(every: Duration) -> Duration {
    let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(0..ms))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn offsets_fall_within_the_interval() {
        let every = Duration::from_secs(300);
        let offsets: Vec<Duration> = (0..200).map(|_| random_offset(every)).collect();
        assert!(offsets.iter().all(|o| *o < every));
        // Not all the same: a fleet does not fire together.
        assert!(offsets.iter().any(|o| *o != offsets[0]));
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_run_periodically_and_stop_on_shutdown_after_the_run_under_way() {
        let runs = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let mut jobs = Jobs::new();
        let (r, f) = (runs.clone(), finished.clone());
        jobs.spawn_periodic("test", Duration::from_secs(10), move || {
            let (r, f) = (r.clone(), f.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3)).await;
                f.fetch_add(1, Ordering::SeqCst);
            }
        });
        // Within the first interval (the offset) and then every 10 s.
        tokio::time::sleep(Duration::from_secs(35)).await;
        let n = runs.load(Ordering::SeqCst);
        assert!((3..=4).contains(&n), "{n} runs in 35 s");
        // Wait until a run is under way, then shut down: it finishes, no further run starts.
        while runs.load(Ordering::SeqCst) == finished.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let started = runs.load(Ordering::SeqCst);
        jobs.shutdown(Duration::from_secs(30)).await;
        assert_eq!(finished.load(Ordering::SeqCst), started);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(runs.load(Ordering::SeqCst), started);
    }

    #[tokio::test]
    async fn a_never_signal_never_fires() {
        let s = Shutdown::never();
        assert!(!s.is_triggered());
    }
}
