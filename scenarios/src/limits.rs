//! The process's open-files limit. Every simultaneous order holds a connection, so a burst of 100,000 needs as
//! many descriptors in the client and, with `--spawn`, in the server it starts (which inherits the limit).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Where the kernel caps any process's open-files limit.
const NR_OPEN_PATH: &str = "/proc/sys/fs/nr_open";
/// Descriptors a run needs besides one per connection: the runtime, the server's journal and sled files, logs.
pub const DESCRIPTORS_SPARE: u64 = 1_024;

/// Raises the soft open-files limit to the hard one, and when `wanted` is more than that, tries to raise the hard
/// limit too (allowed for root or with CAP_SYS_RESOURCE). Returns the soft limit in force afterwards.
pub fn raise_open_files(wanted: u64) -> u64 {
    let current = getrlimit(Resource::Nofile);
    let hard = current.maximum.unwrap_or(u64::MAX);
    if wanted > hard {
        let ceiling = std::fs::read_to_string(NR_OPEN_PATH)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let target = wanted.min(ceiling);
        if target > hard
            && setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(target),
                    maximum: Some(target),
                },
            )
            .is_ok()
        {
            return target;
        }
    }
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: current.maximum,
            maximum: current.maximum,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_at_least_the_hard_limit() {
        let before = getrlimit(Resource::Nofile);
        let after = raise_open_files(0);
        assert!(after >= before.current.unwrap_or(0));
        assert_eq!(Some(after), getrlimit(Resource::Nofile).current);
    }
}
