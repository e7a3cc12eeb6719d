//! Test hosts of the suite's own: a network namespace joined to this one by a veth pair, so a
//! server started in it sits at an address of its own, and what crosses the link can be made to
//! go wrong the way networks do: added latency, lost packets, or a black hole (every packet
//! dropped, no reset sent).
//!
//! How, on this machine's kernel: it has no `sch_netem` (nor `prio`, nor tc actions), so faults
//! are netfilter rules inside the namespace (`iptables`, Debian's package): loss is the
//! `statistic` match dropping a share of packets each way, a black hole drops them all, and
//! latency queues every packet towards the server (`NFQUEUE`) to a thread of the test's that
//! gives each its verdict `delay` after it arrived. The rules live in the namespace, so the
//! machine's own rules are never touched, and they go with it.
//!
//! Addresses come from 198.18.0.0/15, the block RFC 2544 reserves for benchmarking networks.
//! A `blackhole` route for the whole block keeps any packet for an address of a namespace that
//! is gone (a test that died mid-way) on this machine.

use std::collections::VecDeque;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::Place;

/// What goes wrong on a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Every packet towards the server waits this long: each round trip takes that much more.
    Latency(Duration),
    /// This share of packets (0..1) is dropped, each way.
    Loss(f64),
    /// Every packet is dropped, each way, and nothing answers: no reset, no ICMP.
    BlackHole,
    /// The connections open when the fault begins are swallowed (every packet of theirs
    /// dropped, each way) while new ones work: what a NAT or load balancer that lost its state,
    /// or an address that moved, does to long-lived connections.
    DeadConnections,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Latency(d) => write!(f, "{} ms added latency", d.as_millis()),
            Fault::Loss(share) => write!(f, "{:.0} % loss", share * 100.0),
            Fault::BlackHole => write!(f, "a black hole"),
            Fault::DeadConnections => write!(f, "open connections swallowed"),
        }
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace and its link; removed (with everything that still runs in it) when dropped.
pub struct Host {
    name: String,
    host_if: String,
    ns_if: String,
    /// The server side's address, for URLs.
    pub ip: Ipv4Addr,
    delayer: Option<Delayer>,
}

impl Host {
    /// Makes the namespace and the link, or fails saying why: these tests need root and
    /// iproute2 and iptables, and a test that cannot make its network must not pass.
    #[allow(
        clippy::new_without_default,
        reason = "each call makes a namespace and a link: not a default value"
    )]
    pub fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("vs-{pid}-{n}");
        let host_if = format!("vsh{}x{n}", pid % 100_000);
        let ns_if = format!("vsn{}x{n}", pid % 100_000);
        // A /30 of 198.18.0.0/15 for this link.
        let block = (pid.wrapping_mul(37).wrapping_add(n)) % (1 << 15);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
        let (gateway, ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        for tool in ["ip", "iptables"] {
            assert!(
                Command::new(tool).arg("--version").output().is_ok(),
                "`{tool}` is missing: the network fault tests need iproute2 and iptables (Debian packages; .ci/run installs them)"
            );
        }
        run(&["ip", "route", "replace", "blackhole", "198.18.0.0/15"]);
        let made = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip runs");
        assert!(
            made.status.success(),
            "cannot make a network namespace ({}): the network fault tests need root \
             (CAP_SYS_ADMIN and CAP_NET_ADMIN)",
            String::from_utf8_lossy(&made.stderr).trim()
        );
        let host = Self {
            name,
            host_if,
            ns_if,
            ip,
            delayer: None,
        };
        let (ns, hif, nif) = (&host.name, &host.host_if, &host.ns_if);
        run(&[
            "ip", "link", "add", hif, "type", "veth", "peer", "name", nif,
        ]);
        run(&["ip", "link", "set", nif, "netns", ns]);
        run(&["ip", "addr", "add", &format!("{gateway}/30"), "dev", hif]);
        run(&["ip", "link", "set", hif, "up"]);
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/30"),
            "dev",
            nif,
        ]);
        run(&["ip", "-n", ns, "link", "set", nif, "up"]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        host
    }

    /// Where a server started on this host listens: its address, its programs run in the
    /// namespace (`ip netns exec`, which becomes the program: a child's pid is the program's).
    pub fn place(&self) -> Place {
        Place::wrapped(
            self.ip.to_string(),
            ["ip", "netns", "exec", &self.name]
                .map(str::to_owned)
                .to_vec(),
        )
    }

    /// Makes the link misbehave for every port (`ports` empty) or only for the server ports
    /// listed, in place of what it did before.
    pub fn fault(&mut self, fault: Fault, ports: &[u16]) {
        self.heal();
        self.add_fault(fault, ports);
    }

    /// Adds `fault` to what the link does already (the rules before it still apply first).
    pub fn add_fault(&mut self, fault: Fault, ports: &[u16]) {
        // Towards the server (arriving in the namespace), then back (leaving it).
        let mut rules: Vec<Vec<String>> = Vec::new();
        let towards = |port: Option<u16>| {
            let mut rule = vec!["INPUT".to_owned(), "-i".to_owned(), self.ns_if.clone()];
            if let Some(port) = port {
                rule.extend(["-p", "tcp", "--dport"].map(str::to_owned));
                rule.push(port.to_string());
            }
            rule
        };
        let back = |port: Option<u16>| {
            let mut rule = vec!["OUTPUT".to_owned(), "-o".to_owned(), self.ns_if.clone()];
            if let Some(port) = port {
                rule.extend(["-p", "tcp", "--sport"].map(str::to_owned));
                rule.push(port.to_string());
            }
            rule
        };
        let ports: Vec<Option<u16>> = if ports.is_empty() {
            vec![None]
        } else {
            ports.iter().copied().map(Some).collect()
        };
        const QUEUE: u16 = 7;
        for &port in &ports {
            match fault {
                Fault::Latency(_) => {
                    let mut rule = towards(port);
                    rule.extend(["-j", "NFQUEUE", "--queue-num"].map(str::to_owned));
                    rule.push(QUEUE.to_string());
                    // Packets pass untouched if the delaying thread is not there.
                    rule.push("--queue-bypass".to_owned());
                    rules.push(rule);
                }
                Fault::Loss(share) => {
                    for mut rule in [towards(port), back(port)] {
                        rule.extend(
                            ["-m", "statistic", "--mode", "random", "--probability"]
                                .map(str::to_owned),
                        );
                        rule.push(format!("{share:.4}"));
                        rule.extend(["-j", "DROP"].map(str::to_owned));
                        rules.push(rule);
                    }
                }
                Fault::DeadConnections => {}
                Fault::BlackHole => {
                    for mut rule in [towards(port), back(port)] {
                        rule.extend(["-j", "DROP"].map(str::to_owned));
                        rules.push(rule);
                    }
                }
            }
        }
        if fault == Fault::DeadConnections {
            rules.clear();
            for (local, remote) in self.established(&ports) {
                rules.push(
                    format!(
                        "INPUT -i {} -p tcp --dport {local} --sport {remote} -j DROP",
                        self.ns_if
                    )
                    .split(' ')
                    .map(str::to_owned)
                    .collect(),
                );
                rules.push(
                    format!(
                        "OUTPUT -o {} -p tcp --sport {local} --dport {remote} -j DROP",
                        self.ns_if
                    )
                    .split(' ')
                    .map(str::to_owned)
                    .collect(),
                );
            }
            assert!(!rules.is_empty(), "no connection was open to swallow");
        }
        if let Fault::Latency(delay) = fault {
            assert!(self.delayer.is_none(), "one latency at a time");
            self.delayer = Some(Delayer::start(&self.name, QUEUE, delay));
        }
        for rule in rules {
            let mut args = vec!["ip", "netns", "exec", &self.name, "iptables", "-A"];
            args.extend(rule.iter().map(String::as_str));
            run(&args);
        }
    }

    /// The (server port, client port) of every TCP connection established over the link, to
    /// the server `ports` listed (all when `None` is among them).
    fn established(&self, ports: &[Option<u16>]) -> Vec<(u16, u16)> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .output()
            .expect("ss runs");
        assert!(
            out.status.success(),
            "ss: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = |addr: &str| addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                // Recv-Q Send-Q Local:Port Peer:Port
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (local, peer) = (fields.get(2)?, fields.get(3)?);
                if !local.starts_with(&self.ip.to_string())
                    || peer.starts_with(&self.ip.to_string())
                {
                    return None;
                }
                Some((port(local)?, port(peer)?))
            })
            .filter(|(local, _)| ports.iter().any(|p| p.is_none_or(|p| p == *local)))
            .collect()
    }

    /// The link works again: every rule removed, every delayed packet let through.
    pub fn heal(&mut self) {
        for chain in ["INPUT", "OUTPUT"] {
            run(&["ip", "netns", "exec", &self.name, "iptables", "-F", chain]);
        }
        if let Some(delayer) = self.delayer.take() {
            delayer.stop();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(delayer) = self.delayer.take() {
            delayer.stop();
        }
        // Whatever still runs in the namespace first (servers the test did not stop), then the
        // link (both ends go together) and the namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(args: &[&str]) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// A thread in the namespace that holds each queued packet for `delay`, then lets it through,
/// in the order they came (every packet waits the same, so arrival order is release order).
struct Delayer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Delayer {
    fn start(namespace: &str, queue_num: u16, delay: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let path = format!("/var/run/netns/{namespace}");
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                // This thread alone moves into the namespace, so the queue it binds is the
                // namespace's.
                let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                // SAFETY: setns on a descriptor of a namespace file; affects this thread only.
                let moved = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(moved, 0, "setns: {}", std::io::Error::last_os_error());
                let mut queue = nfq::Queue::open().expect("a netfilter queue socket");
                queue.bind(queue_num).expect("bind the netfilter queue");
                queue.set_nonblocking(true);
                let _ = bound_tx.send(());
                let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
                loop {
                    let stopping = stop.load(Ordering::Relaxed);
                    let mut received = false;
                    match queue.recv() {
                        Ok(message) => {
                            held.push_back((Instant::now() + delay, message));
                            received = true;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("netfilter queue: {e}"),
                    }
                    while let Some((due, _)) = held.front() {
                        if !stopping && *due > Instant::now() {
                            break;
                        }
                        let (_, mut message) = held.pop_front().expect("a held packet");
                        message.set_verdict(nfq::Verdict::Accept);
                        queue.verdict(message).expect("a verdict");
                    }
                    if stopping {
                        let _ = queue.unbind(queue_num);
                        return;
                    }
                    if !received {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                }
            }
        });
        bound_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the delaying thread bound its queue");
        Self { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
    }
}
