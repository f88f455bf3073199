//! The server's busy threads (workers, the acceptor, the tunnel relay) run
//! under Linux's `SCHED_BATCH` policy, at the nice value they had. Such a
//! thread, woken (an origin answered, a job was queued), does not preempt
//! the thread running on that CPU; it runs when that one blocks or its slice
//! ends. A proxy's threads block again within microseconds, so handing the
//! CPU over on every wake-up only adds context switches. On two CPUs,
//! cache hits: 10% more requests a second at 1 KiB, 15% at 64 KiB, 5% at
//! 1 MiB; 1,024 clients of a far origin, 5% (`docs/performance.md`).
//! Elsewhere, and where the policy cannot be set, threads keep the default.

/// Puts the calling thread under `SCHED_BATCH`, keeping its nice value.
/// Carries on under the default policy if that fails.
pub fn batch_this_thread() {
    #[cfg(target_os = "linux")]
    if let Err(err) = linux::batch() {
        log::debug!("SCHED_BATCH not set, the default policy stays: {err}");
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use thread_priority::unix::{
        NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
        thread_native_id,
    };
    use thread_priority::{ThreadPriority, ThreadPriorityValue};

    pub const BATCH: ThreadSchedulePolicy =
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);

    /// Sets the policy. The crate sets a nice value with it, from a
    /// priority of 0 to 99: the one that maps to the present nice value is
    /// chosen, so that only the policy changes.
    pub fn batch() -> Result<(), String> {
        let nice = rustix::process::getpriority_process(None).map_err(|err| err.to_string())?;
        let priority =
            keeping(nice).ok_or_else(|| format!("no priority keeps the nice value {nice}"))?;
        set_thread_priority_and_policy(thread_native_id(), priority, BATCH)
            .map_err(|err| format!("{err:?}"))
    }

    /// The crate's priority that it maps to `nice` under `BATCH`.
    fn keeping(nice: i32) -> Option<ThreadPriority> {
        (0..=99u8)
            .filter_map(|value| ThreadPriorityValue::try_from(value).ok())
            .map(ThreadPriority::Crossplatform)
            .find(|priority| priority.to_posix(BATCH).ok() == Some(nice))
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use thread_priority::unix::thread_schedule_policy;

        fn nice() -> i32 {
            rustix::process::getpriority_process(None).expect("getpriority")
        }

        /// On a fresh thread, raises its nice value by `raise` (no privilege
        /// needed), then checks that the policy is set and the nice value kept.
        fn batch_keeps_nice(raise: i32) {
            std::thread::spawn(move || {
                let niced = nice() + raise;
                if raise != 0 {
                    rustix::process::setpriority_process(None, niced).expect("setpriority");
                }
                super::super::batch_this_thread();
                assert_eq!(thread_schedule_policy().expect("policy"), BATCH);
                assert_eq!(nice(), niced);
            })
            .join()
            .expect("thread");
        }

        #[test]
        fn a_thread_gets_the_batch_policy_and_keeps_its_nice_value() {
            batch_keeps_nice(0);
        }

        #[test]
        fn a_niced_thread_keeps_its_nice_value() {
            batch_keeps_nice(3);
        }

        #[test]
        fn every_nice_value_has_a_priority_that_keeps_it() {
            for nice in -20..=19 {
                assert!(keeping(nice).is_some(), "nice {nice}");
            }
        }
    }
}
