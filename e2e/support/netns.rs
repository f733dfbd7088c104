//! Network-namespace topologies for end-to-end tests: a core namespace
//! holding a Linux bridge, one namespace per host wired to the bridge by a
//! veth pair (`eth0` inside the host, `v-<host>` on the bridge), and the
//! processes each host runs (`ip netns exec`). Everything is named with a
//! prefix unique to the test run (`sy<pid>-<tag>-`), so parallel runs never
//! collide; namespaces left behind by runs that died (their pid is gone)
//! are removed first. Dropping a [`Net`] removes its namespaces, dropping
//! [`Procs`] kills its processes: also when a test panics.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Runs `ip ARGS`; the error names the command and what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Every network namespace `ip netns list` knows.
fn namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills whatever still runs in `ns`, then deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // The processes of a test run that died: ours to end.
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Removes namespaces of this prefix, and of test runs whose process is gone.
fn remove_stale(prefix: &str) {
    for ns in namespaces() {
        let Some(rest) = ns.strip_prefix("sy") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let ours = ns.starts_with(&format!("{prefix}-"));
        let dead = !Path::new(&format!("/proc/{pid}")).exists();
        if ours || dead {
            remove_namespace(&ns);
        }
    }
}

/// Whether namespaces can be made here: `Err` says why not (not root, no
/// `ip`, `ip netns add` refused).
pub fn available() -> Result<(), String> {
    let probe = format!("sy{}-probe", std::process::id());
    let _ = ip(&["netns", "del", &probe]);
    ip(&["netns", "add", &probe])?;
    let linked = ip(&["-n", &probe, "link", "add", "br-probe", "type", "bridge"]);
    let _ = ip(&["netns", "del", &probe]);
    linked
}

/// A bridge in a core namespace and the hosts wired to it.
pub struct Net {
    /// `sy<pid>-<tag>`: every namespace of this net starts with it.
    pub prefix: String,
    /// The first three octets of the hosts' /24.
    pub subnet: [u8; 3],
    hosts: BTreeMap<String, Ipv4Addr>,
    created: Vec<String>,
}

impl Net {
    /// Creates the core namespace and its bridge, after removing stale
    /// namespaces.
    pub fn create(tag: &str, subnet: [u8; 3]) -> Result<Self, String> {
        let prefix = format!("sy{}-{tag}", std::process::id());
        remove_stale(&prefix);
        let mut net = Net {
            prefix,
            subnet,
            hosts: BTreeMap::new(),
            created: Vec::new(),
        };
        let core = net.core();
        ip(&["netns", "add", &core])?;
        net.created.push(core.clone());
        ip(&["-n", &core, "link", "set", "lo", "up"])?;
        ip(&["-n", &core, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &core, "link", "set", "br0", "up"])?;
        Ok(net)
    }

    fn core(&self) -> String {
        format!("{}-core", self.prefix)
    }

    /// The namespace of `host`.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The address `.octet` of the subnet.
    pub fn addr(&self, octet: u8) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, octet)
    }

    /// The address of `host` on the bridge.
    pub fn host_ip(&self, host: &str) -> Ipv4Addr {
        self.hosts[host]
    }

    /// Adds a host namespace: loopback up, `eth0` at `.octet`/24 on the
    /// bridge.
    pub fn add_host(&mut self, host: &str, octet: u8) -> Result<Ipv4Addr, String> {
        let ns = self.ns(host);
        let core = self.core();
        let peer = format!("v-{host}");
        ip(&["netns", "add", &ns])?;
        self.created.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &peer, "netns",
            &core,
        ])?;
        ip(&["-n", &core, "link", "set", &peer, "master", "br0"])?;
        ip(&["-n", &core, "link", "set", &peer, "up"])?;
        let addr = self.addr(octet);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        self.hosts.insert(host.to_string(), addr);
        Ok(addr)
    }

    /// Adds `addr`/32 to the loopback of `host`.
    pub fn add_loopback_address(&self, host: &str, addr: Ipv4Addr) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns(host),
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "lo",
        ])
    }

    /// Makes every address of `cidr` local to `host` (a `local` route on
    /// lo), so processes there can bind any of them.
    pub fn add_local_range(&self, host: &str, cidr: &str) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns(host),
            "route",
            "add",
            "local",
            cidr,
            "dev",
            "lo",
        ])
    }

    /// Cuts `host` off the bridge (its veth end on the bridge goes down):
    /// nothing reaches it or leaves it until [`Net::restore`].
    pub fn cut(&self, host: &str) {
        let peer = format!("v-{host}");
        ip(&["-n", &self.core(), "link", "set", &peer, "down"]).expect("cut the link");
    }

    /// Puts `host` back on the bridge.
    pub fn restore(&self, host: &str) {
        let peer = format!("v-{host}");
        ip(&["-n", &self.core(), "link", "set", &peer, "up"]).expect("restore the link");
    }

    /// A command that runs `program` inside `host`'s namespace.
    pub fn command(&self, host: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).arg(program);
        c
    }

    /// Removes every namespace (and whatever still runs in it).
    pub fn teardown(&mut self) {
        for ns in self.created.drain(..).rev() {
            remove_namespace(&ns);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// One process: where it runs, how it was started, where it logs.
pub struct Proc {
    pub host: String,
    pub log: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
}

/// Processes by name, killed (and reaped) when dropped.
#[derive(Default)]
pub struct Procs {
    list: BTreeMap<String, Proc>,
}

impl Procs {
    /// Starts `program ARGS` in `host` as `name`, stdout and stderr appended
    /// to `logs/<name>.log`.
    pub fn spawn(
        &mut self,
        net: &Net,
        logs: &Path,
        name: &str,
        host: &str,
        program: &Path,
        args: Vec<OsString>,
    ) {
        let log = logs.join(format!("{name}.log"));
        let mut p = Proc {
            host: host.to_string(),
            log,
            args,
            child: None,
        };
        Self::start(net, program, &mut p);
        self.list.insert(name.to_string(), p);
    }

    fn start(net: &Net, program: &Path, p: &mut Proc) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .expect("open the log");
        let err = file.try_clone().expect("clone the log");
        let child = net
            .command(&p.host, program)
            .args(&p.args)
            .env("RUST_LOG", "info,sled=warn,raft=warn,h2=warn,hyper=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .expect("spawn a process in its namespace");
        p.child = Some(child);
    }

    /// SIGKILLs `name` (`ip netns exec` execs the program: the child is it).
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.list.get_mut(name).and_then(|p| p.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process ID of `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.list.get(name)?.child.as_ref().map(Child::id)
    }

    /// Whether `name` has exited (killed by someone else, say), reaping it.
    pub fn exited(&mut self, name: &str) -> bool {
        self.list
            .get_mut(name)
            .and_then(|p| p.child.as_mut())
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Starts `name` again with the same arguments.
    pub fn restart(&mut self, net: &Net, program: &Path, name: &str) {
        self.kill(name);
        let p = self.list.get_mut(name).expect("a known process");
        Self::start(net, program, p);
    }

    /// The last `n` lines of the logs of the processes whose name starts
    /// with one of `prefixes`.
    pub fn tails(&self, prefixes: &[&str], n: usize) -> String {
        let mut out = String::new();
        for (name, p) in &self.list {
            if !prefixes.iter().any(|pre| name.starts_with(pre)) {
                continue;
            }
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(n)..];
            out.push_str(&format!(
                "---- {name} (in {}), last {} lines of {}:\n{}\n",
                p.host,
                tail.len(),
                p.log.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// Kills every process.
    pub fn kill_all(&mut self) {
        for p in self.list.values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}
