//! Where a server of the test's own runs.

use std::process::Command;

/// Where a server of the test's own runs: on loopback, or on a test host of its own (a network
/// namespace, `tests/network/`), whose programs start through a wrapper (`ip netns exec NAME`).
#[derive(Debug, Clone)]
pub struct Place {
    /// The address it listens on, and clients use.
    pub ip: String,
    wrapper: Vec<String>,
}

impl Place {
    pub fn loopback() -> Self {
        Self {
            ip: "127.0.0.1".to_owned(),
            wrapper: Vec::new(),
        }
    }

    /// At `ip`, its programs started as `wrapper program args...`.
    pub fn wrapped(ip: String, wrapper: Vec<String>) -> Self {
        Self { ip, wrapper }
    }

    /// `program`, to run there.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self.wrapper.split_first() {
            None => Command::new(program),
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(program);
                command
            }
        }
    }
}
