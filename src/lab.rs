//! The NAT lab: a small internet in network namespaces on one machine, with
//! Switchboard on a public segment and clients behind NAT routers.
//!
//! ```text
//!                 11.11.0.0/24 "internet" (bridge in <name>-net)
//!   srv 11.11.0.10 + .11     sink 11.11.0.254 (drops everything: unknown destinations)
//!   srv2 11.11.0.12, srv3 11.11.0.13, ...   (with --instances N: one Switchboard each,
//!                                            sharing rooms through Redis in srv)
//!   r1 11.11.0.21 ── NAT ── c1 10.1.0.2      (symmetric or cone)
//!   r2 11.11.0.22 ── NAT ── c2 10.2.0.2      (symmetric or cone)
//!   r3 11.11.0.23 ── NAT ── c3 10.3.0.2      (corporate: only TCP to port 443 out)
//! ```
//!
//! Everything is built with `ip` and `iptables` run as child processes, and
//! everything it creates lives inside namespaces named `<name>-*`, so deleting
//! those namespaces (after stopping their processes) removes it all.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The address of the server's first and second public interface, and of the sink.
pub const SERVER_IP: &str = "11.11.0.10";
pub const SERVER_IP2: &str = "11.11.0.11";
pub const SINK_IP: &str = "11.11.0.254";
/// The most instances a lab runs (their addresses end before the routers').
pub const MAX_INSTANCES: usize = 9;

/// The DNS name of instance `k` (1-based) inside the lab: `srv.lab`, `srv2.lab`, ... Every
/// namespace of the lab resolves them (its own `/etc/hosts`, see [`hosts_dir`]), and they
/// are on each instance's certificate: Firefox uses TURN over TLS only with a name.
pub fn server_name(k: usize) -> String {
    format!("{}.lab", server_node(k))
}

/// Where `ip netns exec` finds the files it mounts over `/etc` inside namespace `ns`
/// (for programs it starts: a thread that joins the namespace with `setns` keeps this
/// host's `/etc/hosts`).
fn hosts_dir(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

/// The public address of instance `k` (1-based): the first is [`SERVER_IP`].
pub fn server_ip(k: usize) -> String {
    if k <= 1 {
        SERVER_IP.to_owned()
    } else {
        format!("11.11.0.{}", 10 + k)
    }
}

/// The node (namespace suffix) instance `k` runs in: `srv`, `srv2`, `srv3`, ...
pub fn server_node(k: usize) -> String {
    if k <= 1 {
        "srv".to_owned()
    } else {
        format!("srv{k}")
    }
}

/// How a client's router maps and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Address- and port-dependent mapping (MASQUERADE --random-fully) and filtering.
    Symmetric,
    /// Endpoint-independent mapping (MASQUERADE keeps ports), filtering by established flows.
    Cone,
}

impl std::str::FromStr for Nat {
    type Err = String;
    fn from_str(s: &str) -> Result<Nat, String> {
        match s {
            "symmetric" => Ok(Nat::Symmetric),
            "cone" => Ok(Nat::Cone),
            _ => Err(format!("expected \"symmetric\" or \"cone\", got {s:?}")),
        }
    }
}

impl fmt::Display for Nat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Nat::Symmetric => "symmetric",
            Nat::Cone => "cone",
        })
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Prefix of every namespace: 1 to 6 of `[a-z0-9]`.
    pub name: String,
    /// NAT kind of the routers of c1 and c2.
    pub nat: [Nat; 2],
    /// The `switchboard` binary to run in the server namespace.
    pub binary: PathBuf,
    /// Where the generated config, state and server log go.
    pub dir: PathBuf,
    /// Extra TOML appended to the generated server config.
    pub server_toml: String,
    /// How many Switchboard instances run, 1 to [`MAX_INSTANCES`]; more than one share
    /// rooms through a `redis-server` the lab starts in `srv` (on a Unix socket in `dir`).
    pub instances: usize,
}

/// A lab failure, with the command that failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LabError(String);

const NODES: [&str; 9] = ["net", "sink", "srv", "r1", "c1", "r2", "c2", "r3", "c3"];

/// A running lab; dropping it tears everything down.
pub struct Lab {
    pub spec: LabSpec,
    /// Redis (first, when there is a cluster), then the instances in order.
    children: Vec<Child>,
}

impl Lab {
    /// Builds the lab (after removing any earlier one of the same name) and starts
    /// Switchboard in it; on failure, removes whatever was built.
    ///
    /// # Errors
    /// A command failed (most often: not root, or `iptables` missing).
    pub fn up(spec: LabSpec) -> Result<Lab, LabError> {
        check_name(&spec.name)?;
        if !(1..=MAX_INSTANCES).contains(&spec.instances) {
            return Err(LabError(format!(
                "a lab runs 1 to {MAX_INSTANCES} instances, not {}",
                spec.instances
            )));
        }
        down(&spec.name)?;
        let mut lab = Lab {
            spec,
            children: Vec::new(),
        };
        if let Err(e) = lab.build().and_then(|()| lab.start_servers()) {
            drop(lab);
            return Err(e);
        }
        Ok(lab)
    }

    /// Leaves the lab running after this handle is gone (for `switchboard lab up`).
    pub fn detach(mut self) {
        self.children.clear();
        std::mem::forget(self);
    }

    /// The log of instance `k` (1-based).
    pub fn log_path(&self, k: usize) -> PathBuf {
        self.spec.dir.join(if k <= 1 {
            "switchboard.log".to_owned()
        } else {
            format!("switchboard-{k}.log")
        })
    }

    /// The state directory of instance `k` (1-based).
    pub fn state_dir(&self, k: usize) -> PathBuf {
        self.spec.dir.join(if k <= 1 {
            "state".to_owned()
        } else {
            format!("state-{k}")
        })
    }

    /// The self-signed certificate instance `k` made on its first start (for its IP
    /// addresses and [`server_name`]), for a browser to trust.
    pub fn certificate(&self, k: usize) -> PathBuf {
        self.state_dir(k).join(crate::tls::GENERATED_CERT)
    }

    /// The namespace of `node` (`srv`, `c1`, ...).
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.spec.name)
    }

    /// A command that runs `program` inside `node`.
    pub fn command(&self, node: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(node), program]);
        c
    }

    /// What was built, for people.
    pub fn describe(&self) -> String {
        let n = &self.spec.name;
        let mut others = String::new();
        for k in 2..=self.spec.instances {
            let (ip, node) = (server_ip(k), server_node(k));
            others.push_str(&format!(
                "\x20 server  {n}-{node} {ip}: https://{ip}/ or https://{}/, STUN/TURN {ip}:3478 udp+tcp, TURN/TLS {ip}:5349; log {}\n",
                server_name(k),
                self.log_path(k).display()
            ));
        }
        if self.spec.instances > 1 {
            others.push_str(&format!(
                "\x20 redis   {n}-srv  unix socket {} (the {} instances share rooms through it)\n",
                self.spec.dir.join("redis.sock").display(),
                self.spec.instances
            ));
        }
        format!(
            "lab {n} is up\n\
             \x20 server  {n}-srv  {SERVER_IP}, {SERVER_IP2}: https://{SERVER_IP}/ or https://srv.lab/ (443), STUN/TURN {SERVER_IP}:3478 udp+tcp, {SERVER_IP2}:3478 udp, TURN/TLS {SERVER_IP}:5349\n\
             {others}\
             \x20 sink    {n}-sink {SINK_IP}: default route of the server and routers; drops everything\n\
             \x20 c1      {n}-c1   10.1.0.2 behind {n}-r1 11.11.0.21 ({})\n\
             \x20 c2      {n}-c2   10.2.0.2 behind {n}-r2 11.11.0.22 ({})\n\
             \x20 c3      {n}-c3   10.3.0.2 behind {n}-r3 11.11.0.23 (corporate: only TCP to port 443)\n\
             \x20 server log: {}\n\
             run a program in a node: switchboard lab exec c1 -- <command>",
            self.spec.nat[0],
            self.spec.nat[1],
            self.spec.dir.join("switchboard.log").display()
        )
    }

    fn build(&mut self) -> Result<(), LabError> {
        let n = self.spec.name.clone();
        let ns = |node: &str| format!("{n}-{node}");
        let servers: Vec<String> = (2..=self.spec.instances).map(server_node).collect();
        for node in NODES
            .iter()
            .copied()
            .chain(servers.iter().map(String::as_str))
        {
            run(&["ip", "netns", "add", &ns(node)])?;
            run(&["ip", "-n", &ns(node), "link", "set", "lo", "up"])?;
            sysctl(&ns(node), "net.ipv6.conf.all.disable_ipv6", "1")?;
            self.write_hosts(&ns(node))?;
        }
        let net = ns("net");
        run(&["ip", "-n", &net, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &net, "link", "set", "br0", "up"])?;
        // Public side: one veth per node into the bridge.
        let mut public: Vec<(String, Vec<String>)> = vec![
            ("srv".into(), vec![SERVER_IP.into(), SERVER_IP2.into()]),
            ("sink".into(), vec![SINK_IP.into()]),
            ("r1".into(), vec!["11.11.0.21".into()]),
            ("r2".into(), vec!["11.11.0.22".into()]),
            ("r3".into(), vec!["11.11.0.23".into()]),
        ];
        public.extend((2..=self.spec.instances).map(|k| (server_node(k), vec![server_ip(k)])));
        for (node, addrs) in &public {
            let node = node.as_str();
            let inside = ns(node);
            run(&[
                "ip", "link", "add", "wan", "netns", &inside, "type", "veth", "peer", "name", node,
                "netns", &net,
            ])?;
            run(&["ip", "-n", &net, "link", "set", node, "master", "br0", "up"])?;
            for addr in addrs {
                run(&[
                    "ip",
                    "-n",
                    &inside,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "wan",
                ])?;
            }
            run(&["ip", "-n", &inside, "link", "set", "wan", "up"])?;
            if node != "sink" {
                // Unknown destinations go to the sink, which drops them silently, like the internet.
                run(&[
                    "ip", "-n", &inside, "route", "add", "default", "via", SINK_IP,
                ])?;
            }
        }
        let sink = ns("sink");
        for chain in ["INPUT", "FORWARD"] {
            iptables(&sink, &["-P", chain, "DROP"])?;
        }
        // Private side: each client behind its router.
        for (i, kind) in [
            (1, Some(self.spec.nat[0])),
            (2, Some(self.spec.nat[1])),
            (3, None),
        ] {
            let (router, client) = (ns(&format!("r{i}")), ns(&format!("c{i}")));
            run(&[
                "ip", "link", "add", "lan", "netns", &router, "type", "veth", "peer", "name",
                "eth0", "netns", &client,
            ])?;
            run(&[
                "ip",
                "-n",
                &router,
                "addr",
                "add",
                &format!("10.{i}.0.1/24"),
                "dev",
                "lan",
            ])?;
            run(&[
                "ip",
                "-n",
                &client,
                "addr",
                "add",
                &format!("10.{i}.0.2/24"),
                "dev",
                "eth0",
            ])?;
            run(&["ip", "-n", &router, "link", "set", "lan", "up"])?;
            run(&["ip", "-n", &client, "link", "set", "eth0", "up"])?;
            run(&[
                "ip",
                "-n",
                &client,
                "route",
                "add",
                "default",
                "via",
                &format!("10.{i}.0.1"),
            ])?;
            sysctl(&router, "net.ipv4.ip_forward", "1")?;
            for iface in ["all", "default", "wan", "lan"] {
                sysctl(&router, &format!("net.ipv4.conf.{iface}.rp_filter"), "0")?;
            }
            let mut masquerade = vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ];
            if kind == Some(Nat::Symmetric) {
                masquerade.push("--random-fully");
            }
            iptables(&router, &masquerade)?;
            iptables(&router, &["-P", "FORWARD", "DROP"])?;
            iptables(
                &router,
                &[
                    "-A",
                    "FORWARD",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            )?;
            match kind {
                Some(_) => iptables(
                    &router,
                    &["-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT"],
                )?,
                None => iptables(
                    &router,
                    &[
                        "-A", "FORWARD", "-i", "lan", "-o", "wan", "-p", "tcp", "--dport", "443",
                        "-j", "ACCEPT",
                    ],
                )?,
            }
            // Nothing unsolicited reaches the router itself from the outside.
            iptables(&router, &["-P", "INPUT", "DROP"])?;
            iptables(&router, &["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])?;
            iptables(&router, &["-A", "INPUT", "-i", "lan", "-j", "ACCEPT"])?;
            iptables(
                &router,
                &[
                    "-A",
                    "INPUT",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            )?;
        }
        Ok(())
    }

    /// Gives namespace `ns` this host's `/etc/hosts` plus the instances' names
    /// ([`server_name`]). This host's own names must stay in it: a lookup that reaches DNS
    /// from inside the lab goes to the sink and waits for its timeouts (Firefox resolves
    /// the host name at start: 20 s).
    fn write_hosts(&self, ns: &str) -> Result<(), LabError> {
        let dir = hosts_dir(ns);
        let mut hosts = fs::read_to_string("/etc/hosts")
            .unwrap_or_else(|_| "127.0.0.1 localhost\n::1 localhost\n".to_owned());
        if !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        for k in 1..=self.spec.instances {
            hosts.push_str(&format!("{} {}\n", server_ip(k), server_name(k)));
        }
        fs::create_dir_all(&dir)
            .and_then(|()| fs::write(dir.join("hosts"), hosts))
            .map_err(|e| LabError(format!("cannot write {}/hosts: {e}", dir.display())))
    }

    /// Starts Redis (for a cluster) and every instance, each once it is ready.
    fn start_servers(&mut self) -> Result<(), LabError> {
        let dir = self.spec.dir.clone();
        fs::create_dir_all(&dir)
            .map_err(|e| LabError(format!("cannot create {}: {e}", dir.display())))?;
        let cluster = if self.spec.instances > 1 {
            Some(self.start_redis()?)
        } else {
            None
        };
        for k in 1..=self.spec.instances {
            let ip = server_ip(k);
            let state = self.state_dir(k);
            let config_path = if k == 1 {
                dir.join("config.toml")
            } else {
                dir.join(format!("config-{k}.toml"))
            };
            // The first instance also answers on the second address (STUN's other address).
            let name = server_name(k);
            let (names, udp) = if k == 1 {
                (
                    format!("\"{SERVER_IP}\", \"{SERVER_IP2}\", \"{name}\""),
                    "0.0.0.0",
                )
            } else {
                (format!("\"{ip}\", \"{name}\""), "0.0.0.0")
            };
            let cluster_toml = match &cluster {
                Some((socket, secret)) => {
                    format!(
                        "[cluster]\nredis_url = \"redis+unix://{}\"\ninstance_id = \"{}\"\npublic_host = \"{ip}\"\n",
                        socket.display(),
                        server_node(k)
                    ) + &format!(
                        "# Every instance of a cluster needs the same TURN secret.\n[turn]\nsecrets = [\"{secret}\"]\n"
                    )
                }
                None => "[turn]\n".to_owned(),
            };
            let config = format!(
                r#"# Generated by `switchboard lab up` for the lab "{name}", instance {k} of {instances}.
[server]
state_dir = "{state}"
[log]
format = "json"
level = "info,switchboard=debug"
[https]
listen = ["{ip}:443"]
extra_names = [{names}]
{cluster_toml}# The wildcard, as in the shipped config: answers must leave from the address asked.
udp_listen = ["{udp}:3478"]
tcp_listen = ["{ip}:3478"]
tls_listen = ["{ip}:5349"]
relay_ip = "{ip}"
# No public_host: TURN URLs name the server as the page does (https://{ip}/ or
# https://{name}/; Firefox takes TURN over TLS only with a name).
# The room fence, as in the shipped config.
fence = "room"
grace_period_s = 2
# The clients' private LANs: relaying to their host candidates is allowed, so that
# sends to unreachable addresses (they go to the sink) are part of what the lab shows.
allow_peers = ["10.0.0.0/8"]
{extra}
"#,
                name = self.spec.name,
                instances = self.spec.instances,
                state = state.display(),
                extra = self.spec.server_toml,
            );
            fs::write(&config_path, config)
                .map_err(|e| LabError(format!("cannot write {}: {e}", config_path.display())))?;
            let log_path = self.log_path(k);
            let mut command = self.command(&server_node(k), &self.spec.binary.to_string_lossy());
            command.arg("--config").arg(&config_path);
            let child = spawn_logged(command, &log_path)?;
            let pid_file = if k == 1 {
                dir.join("switchboard.pid")
            } else {
                dir.join(format!("switchboard-{k}.pid"))
            };
            fs::write(pid_file, child.id().to_string()).map_err(|e| LabError(e.to_string()))?;
            self.children.push(child);
            self.wait_for(&log_path, "\"message\":\"ready\"", "switchboard")?;
        }
        Ok(())
    }

    /// Starts `redis-server` in `srv` on a Unix socket in the lab's directory (the instances'
    /// namespaces share the file system) and returns the socket and a fresh TURN secret.
    fn start_redis(&mut self) -> Result<(PathBuf, String), LabError> {
        let socket = self.spec.dir.join("redis.sock");
        let _ = fs::remove_file(&socket);
        let mut command = self.command("srv", "redis-server");
        command
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(&self.spec.dir);
        let log_path = self.spec.dir.join("redis.log");
        let child = spawn_logged(command, &log_path)?;
        self.children.push(child);
        self.wait_for(&log_path, "eady to accept connections", "redis-server")?;
        let secret: String = {
            use rand::Rng;
            let bytes: [u8; 24] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        Ok((socket, secret))
    }

    /// Waits for a line containing `needle` in the log of the newest child (which writes to a
    /// file, so this polls it).
    fn wait_for(&mut self, log_path: &Path, needle: &str, what: &str) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if fs::read_to_string(log_path).is_ok_and(|l| l.lines().any(|l| l.contains(needle))) {
                return Ok(());
            }
            let failed = match self.children.last_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(format!("{what} exited with {status} in the lab")),
                _ if Instant::now() > deadline => Some(format!(
                    "{what} did not become ready in the lab within 20 s"
                )),
                _ => None,
            };
            if let Some(failed) = failed {
                let log = fs::read_to_string(log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(LabError(format!(
                    "{failed}; {} (newest first):\n{}",
                    log_path.display(),
                    tail.join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts `command` with its output in a new file at `log_path`.
fn spawn_logged(mut command: Command, log_path: &Path) -> Result<Child, LabError> {
    let log = fs::File::create(log_path)
        .map_err(|e| LabError(format!("cannot create {}: {e}", log_path.display())))?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| LabError(e.to_string()))?)
        .stderr(log)
        .spawn()
        .map_err(|e| LabError(format!("cannot start {command:?}: {e}")))
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The instances first, Redis last.
        for mut child in self.children.drain(..).rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = down(&self.spec.name);
    }
}

fn check_name(name: &str) -> Result<(), LabError> {
    let ok = (1..=6).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError(format!(
            "lab name must be 1 to 6 of [a-z0-9], got {name:?}"
        )))
    }
}

/// The namespaces of lab `name` that exist now.
pub fn namespaces(name: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else { return Vec::new() };
    let prefix = format!("{name}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| {
            ns.strip_prefix(&prefix).is_some_and(|node| {
                NODES.contains(&node) || (2..=MAX_INSTANCES).any(|k| node == server_node(k))
            })
        })
        .map(str::to_owned)
        .collect()
}

/// The processes running inside the namespaces of lab `name`.
pub fn processes(name: &str) -> Vec<u32> {
    namespaces(name)
        .iter()
        .flat_map(|ns| {
            let out = Command::new("ip").args(["netns", "pids", ns]).output();
            out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Stops every process inside lab `name` and deletes its namespaces (with their links and rules).
///
/// # Errors
/// A namespace could not be deleted.
pub fn down(name: &str) -> Result<(), LabError> {
    check_name(name)?;
    let pids = processes(name);
    for (signal, wait) in [
        ("-TERM", Duration::from_secs(3)),
        ("-KILL", Duration::from_secs(3)),
    ] {
        let alive: Vec<String> = pids
            .iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .map(u32::to_string)
            .collect();
        if alive.is_empty() {
            break;
        }
        let _ = Command::new("kill")
            .arg(signal)
            .args(&alive)
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline
            && alive
                .iter()
                .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut first_error = None;
    for ns in namespaces(name) {
        if let Err(e) = run(&["ip", "netns", "del", &ns]) {
            first_error.get_or_insert(e);
        }
    }
    // The hosts files the lab wrote, also of namespaces already gone; nothing else there.
    let all = NODES
        .iter()
        .map(|n| (*n).to_owned())
        .chain((2..=MAX_INSTANCES).map(server_node));
    for node in all {
        let dir = hosts_dir(&format!("{name}-{node}"));
        let hosts = dir.join("hosts");
        match fs::remove_file(&hosts) {
            Ok(()) => {
                // Only if empty: files someone else put there stay.
                let _ = fs::remove_dir(&dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                first_error
                    .get_or_insert(LabError(format!("cannot remove {}: {e}", hosts.display())));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A summary of lab `name`: its namespaces and processes.
pub fn status(name: &str) -> String {
    let namespaces = namespaces(name);
    if namespaces.is_empty() {
        return format!("lab {name} is down");
    }
    format!(
        "lab {name}: namespaces {}; {} processes inside",
        namespaces.join(" "),
        processes(name).len()
    )
}

fn run(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| {
            LabError(format!(
                "cannot run `{}`: {e} (the lab needs iproute2 and iptables)",
                args.join(" ")
            ))
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hint = if stderr.contains("Operation not permitted") || stderr.contains("Permission denied")
    {
        " (the lab needs root)"
    } else {
        ""
    };
    Err(LabError(format!(
        "`{}` failed: {}{hint}",
        args.join(" "),
        stderr.trim()
    )))
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ])
}

fn iptables(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut all = vec!["ip", "netns", "exec", ns, "iptables", "-w"];
    all.extend_from_slice(args);
    run(&all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_nat_kinds_are_checked() {
        assert!(check_name("sb").is_ok());
        assert!(check_name("lab42").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("toolong7").is_err());
        assert!(check_name("a-b").is_err());
        assert_eq!("cone".parse::<Nat>(), Ok(Nat::Cone));
        assert!("full".parse::<Nat>().is_err());
    }
}
