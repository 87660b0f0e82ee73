//! The `ovl` command line as clap definitions, and nothing else.
//!
//! This module says which commands and flags exist and how `--help` explains them. It does not
//! validate values beyond their Rust type (that is [`crate::request`]), read configuration
//! ([`crate::config`]) or talk to the controller ([`crate::run`]). To add a command family such
//! as `ovl lab …`, add a variant to [`Command`] with its own subcommand enum and handle it in
//! [`crate::run::run`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// Help text after the top-level `--help`: configuration sources and exit codes.
const TOP_AFTER_HELP: &str = "\
Examples:
  ovl tenant create blue --subnet 10.10.0.0/24
  ovl endpoint create blue --host node1 --name web1 --netns web1 --wait
  ovl tenant set blue --nat on
  ovl publish web1 8080:80
  ovl status

Configuration (a flag beats the environment, which beats the config file):
  controller   --controller, OVL_CONTROLLER, `controller = \"HOST:PORT\"` in the config file
  credentials  --credentials, OVL_CREDENTIALS, `credentials = \"/path\"` in the config file
  config file  --config, OVL_CONFIG, else $XDG_CONFIG_HOME/ovl/config.toml
               or ~/.config/ovl/config.toml
  OVL_LOG      log filter for diagnostics on stderr (e.g. OVL_LOG=debug)

Exit codes:
  0  success
  1  other or internal error (also: a --wait saw the host fail to apply the change,
     or an endpoint whose container, process or namespace is missing)
  2  usage: bad command line, or missing/invalid client configuration
  3  not found
  4  already exists, or conflicts with current state
  5  invalid argument
  6  a pool (VNIs, VLAN tags, addresses) is exhausted
  7  permission denied, authentication or TLS failure, unusable credential bundle,
     session refused
  8  controller unreachable or timed out (also: a --wait ran out of time)
  9  protocol version mismatch between ovl and the controller
  10  ovl trace: the packet does not arrive";

/// `ovl`: drive an ovl cluster's controller.
#[derive(Debug, Parser)]
#[command(
    name = "ovl",
    version,
    about = "Manage ovl overlay networks: tenants, hosts and container endpoints",
    long_about = "Manage ovl overlay networks.\n\n\
        A tenant is an isolated L2 segment (VXLAN, GRE, VLAN or flat) with its own IPv4 subnet. An \
        endpoint attaches one container network namespace on one host to a tenant. Hosts \
        register themselves when their agent first connects. Every command talks to the \
        controller over QUIC with mutual TLS, using an admin credential bundle.",
    after_help = TOP_AFTER_HELP,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Controller address as HOST:PORT, or the controllers of a cluster as HOST:PORT,HOST:PORT
    /// (tried in order, the next after 500 ms without an answer; the first to answer is used)
    /// [env: OVL_CONTROLLER] [config: controller]
    #[arg(long, global = true, value_name = "HOST:PORT[,…]")]
    pub controller: Option<String>,

    /// Admin credential bundle: a directory with ca.crt, tls.crt and tls.key
    /// [env: OVL_CREDENTIALS] [config: credentials]
    #[arg(long, global = true, value_name = "DIR")]
    pub credentials: Option<PathBuf>,

    /// Config file [env: OVL_CONFIG] [default: ~/.config/ovl/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Output format; every command supports both (under json, a failure is printed as a
    /// JSON object too)
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Print only the names of the objects listed or changed, one per line
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Longest wait for one answer from the controller (e.g. 30s, 2m, 500ms)
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Longest wait to connect and authenticate to the controller
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

impl GlobalArgs {
    /// How to print: `-q` is `-o name`.
    pub fn format(&self) -> OutputFormat {
        if self.quiet {
            OutputFormat::Name
        } else {
            self.output
        }
    }
}

/// How replies are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for lists, `key: value` blocks for single objects.
    Table,
    /// The reply's data as pretty-printed JSON, for scripts.
    Json,
    /// Only the names of the objects, one per line (as -q).
    Name,
    /// `ovl topology` only: the picture in Graphviz's language.
    Dot,
    /// `ovl topology` only: the picture drawn as SVG (needs Graphviz's `dot`).
    Svg,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, show and delete tenants (isolated L2 segments)
    #[command(subcommand)]
    Tenant(TenantCommand),

    /// List and show hosts (registered by their agents)
    #[command(subcommand)]
    Host(HostCommand),

    /// Attach container network namespaces to tenants
    #[command(subcommand)]
    Endpoint(EndpointCommand),

    /// Publish a port of an endpoint on its tenant's gateway host (like `docker run -p`)
    #[command(
        long_about = "Publish a port of an endpoint: connections to HOSTPORT on the underlay \
            address of the host that carries the tenant's router (its gateway host) are \
            forwarded to PORT of the endpoint. The protocol is tcp unless /udp is given. A \
            protocol and host port can be published once in the cluster (routers move between \
            hosts when one is lost). `ovl endpoint show` lists an endpoint's published ports and \
            where they are reachable.",
        after_help = "Examples:\n  ovl publish web1 8080:80\n  ovl publish dns1 5353:53/udp --wait"
    )]
    Publish(PublishArgs),

    /// Stop publishing a port of an endpoint
    #[command(after_help = "Examples:\n  ovl unpublish web1 8080\n  ovl unpublish dns1 5353/udp")]
    Unpublish(PublishArgs),

    /// Draw the overlay: hosts, endpoints, routers and the tunnels between hosts
    #[command(
        long_about = "Draw the overlay as the controller knows it: each host with its endpoints \
            (coloured by tenant, outlined red unless `ok`) and the tenant routers it runs, and \
            one tunnel per pair of hosts that share a VXLAN or GRE tenant, labelled with the \
            tenants and keys it carries (red when an end's agent is not connected). -o table \
            prints it as text, -o json as data, -o dot in Graphviz's language and -o svg as a \
            drawing (Graphviz's `dot` must be installed: apt-get install graphviz).",
        after_help = "Examples:\n  ovl topology\n  ovl topology -o svg > overlay.svg\n  \
            ovl topology -o dot | dot -Tpng > overlay.png"
    )]
    Topology,

    /// Trace a packet from an endpoint to an address, hop by hop
    #[command(
        long_about = "Follow one packet from ENDPOINT to DEST (an IPv4 address or an endpoint's \
            name) as the hosts' Open vSwitch would forward it, hop by hop, as `ovn-trace` and \
            Antrea's Traceflow show it: the source endpoint's port, its host's br-int and \
            br-tun (each agent runs `ovs-appctl ofproto/trace`), the tunnel (VNI or GRE key and \
            remote host) or, for a vlan or flat tenant, the uplinks' wire (its VLAN tag or \
            none), the destination host, and the destination endpoint's port or the \
            tenant's router and its NAT. Where the packet stops, the last hop says why: \
            another tenant's address, no such address, a port that is down, a packet larger \
            than the MTU, a host whose agent is not connected. Nothing is sent and nothing is \
            changed. Exits 0 when the packet arrives and 10 when it does not.",
        after_help = "Examples:\n  ovl trace web1 10.10.0.3\n  ovl trace web1 web2 --tcp 80\n  \
            ovl trace web1 10.10.0.1 --icmp --size 1400\n  ovl trace web1 192.0.2.10 --udp 53 --ovs\n  \
            ovl trace web1 web2 -o json"
    )]
    Trace(TraceArgs),

    /// Print a shell completion script (bash, zsh or fish)
    #[command(
        long_about = "Print a completion script for SHELL on stdout. The packages install them; \
            by hand: `ovl completion bash > /etc/bash_completion.d/ovl`, \
            `ovl completion zsh > \"${fpath[1]}/_ovl\"`, \
            `ovl completion fish > ~/.config/fish/completions/ovl.fish`.",
        after_help = "Example:\n  source <(ovl completion bash)"
    )]
    Completion {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print ovl's man page (roff; `ovl man | man -l -`)
    #[command(hide = true)]
    Man,

    /// Show the versions of ovl and of the controller it talks to
    #[command(after_help = "Example:\n  ovl version\n  ovl version -o json")]
    Version,

    /// Show every host's session and apply state
    #[command(
        long_about = "Show every host's session and apply state: whether its agent is \
            connected, when the controller last heard from it, the generation of intent it has \
            applied against the one the controller wants it to have, its datapath, how many \
            endpoints it carries, and objects that failed in its last report.",
        after_help = "Example:\n  ovl status\n  ovl status -o json"
    )]
    Status,

    /// Run a multi-host ovl lab on this machine (network namespaces; needs root)
    #[command(
        subcommand,
        long_about = "Build and drive a lab of N hosts on this one Linux machine. Each host is a \
            network namespace with its own Open vSwitch (userspace datapath) and ovl-agent; the \
            hosts sit in different subnets behind a router namespace, so VXLAN and GRE cross a \
            routed underlay, and share an L2 trunk for vlan tenants. The controller runs in the \
            root namespace and `ovl` is configured to talk to it.",
        after_help = "Example:\n  \
            sudo ovl lab up --hosts 3\n  \
            sudo ovl lab demo\n  \
            sudo ovl lab container web1 --host h1 --tenant blue\n  \
            sudo ovl lab exec web1 -- ip addr\n  \
            sudo ovl lab down"
    )]
    Lab(LabCommand),
}

/// `ovl lab …`
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab: namespaces, underlay, OVS per host, controller, agents, CLI config
    #[command(
        after_help = "Re-running `up` on a healthy lab changes nothing; a broken one is \
        rebuilt. A failure halfway removes what was built."
    )]
    Up(LabUpArgs),
    /// Show the lab's hosts, processes and addresses
    Status(LabDirArg),
    /// Remove every namespace, process, link and file the lab created
    Down(LabDirArg),
    /// Create a lab container (a plain network namespace) and optionally attach it to a tenant
    #[command(
        after_help = "Example:\n  ovl lab container web1 --host h1 --tenant blue --ip 10.10.0.20\n  \
        ovl lab container web1 --rm"
    )]
    Container(LabContainerArgs),
    /// Run a command inside a lab container or host (`ip netns exec`)
    #[command(
        after_help = "Example:\n  ovl lab exec web1 -- ping -c 3 10.10.0.12\n  ovl lab exec h1 -- ovs-vsctl show\n  ovl lab exec ext -- ip addr"
    )]
    Exec(LabExecArgs),
    /// Show ovl at work: two tenants with the same subnet across the hosts, pings that prove
    /// connectivity within a tenant and isolation between them
    Demo(LabDirArg),
}

/// The lab directory.
#[derive(Debug, Clone, Args)]
pub struct LabDirArg {
    /// Lab directory (state, certificates, logs)
    #[arg(long, default_value = "/var/lib/ovl-lab", value_name = "DIR")]
    pub dir: PathBuf,
}

/// `ovl lab up`
#[derive(Debug, Clone, Args)]
pub struct LabUpArgs {
    #[command(flatten)]
    pub dir: LabDirArg,
    /// Number of hosts [default: 3, or 2 with --vm]
    #[arg(long)]
    pub hosts: Option<u8>,
    /// Prefix of the lab's namespaces and links
    #[arg(long, default_value = "ovl-lab")]
    pub prefix: String,
    /// The lab uses 10.NET.0.0/16
    #[arg(long, default_value_t = 77)]
    pub net: u8,
    /// Controller port (UDP)
    #[arg(long, default_value_t = 7300)]
    pub port: u16,
    /// Directory with ovl-controller and ovl-agent [default: next to this ovl]
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Do not write ~/.config/ovl/config.toml
    #[arg(long)]
    pub no_cli_config: bool,
    /// Real VMs instead of namespaces: a controller VM and --hosts host VMs with systemd, the
    /// kernel datapath and ovl installed by deploy/install.sh (KVM where the CPU has it, QEMU's
    /// emulation elsewhere). The default --hosts is then 2 and --prefix names the lab's
    /// namespace.
    #[arg(long)]
    pub vm: bool,
    /// With --vm: the ovl source tree whose deploy/ and vagrant/ scripts install the VMs
    /// [default: two levels above --bin-dir, as in a checkout's target/<profile>]
    #[arg(long, value_name = "DIR", requires = "vm")]
    pub source_dir: Option<PathBuf>,
    /// With --vm: an image directory built by vagrant/build-box.sh [default: build it, or reuse
    /// the machine's cached one]
    #[arg(long, value_name = "DIR", requires = "vm")]
    pub image: Option<PathBuf>,
    /// With --vm: memory per host VM, MiB
    #[arg(long, default_value_t = 1024, requires = "vm")]
    pub memory: u32,
    /// With --vm: virtual CPUs per VM
    #[arg(long, default_value_t = 2, requires = "vm")]
    pub cpus: u8,
}

/// `ovl lab container`
#[derive(Debug, Clone, Args)]
pub struct LabContainerArgs {
    /// Container (network namespace) name; also the endpoint name with --tenant
    pub name: String,
    /// Lab host whose agent plumbs it (h1, h2, …)
    #[arg(long, required_unless_present = "rm")]
    pub host: Option<String>,
    /// Attach it to this tenant (creates endpoint NAME)
    #[arg(long)]
    pub tenant: Option<String>,
    /// Fixed address in the tenant's subnet
    #[arg(long, requires = "tenant")]
    pub ip: Option<String>,
    /// Remove the container (and its endpoint, if any) instead
    #[arg(long, conflicts_with_all = ["host", "tenant", "ip"])]
    pub rm: bool,
    #[command(flatten)]
    pub dir: LabDirArg,
}

/// `ovl lab exec`
#[derive(Debug, Clone, Args)]
pub struct LabExecArgs {
    /// Container name, a lab host name (h1, …), or `ext` (the namespace standing for the
    /// internet)
    pub name: String,
    /// The command and its arguments
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub dir: LabDirArg,
}

/// `ovl tenant …`
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant
    #[command(
        long_about = "Create a tenant: an isolated L2 segment with its own IPv4 subnet. The \
            controller allocates the segment key (VXLAN VNI or GRE key), the local VLAN tag and \
            the gateway address unless given, and derives the MTU from the hosts' underlay MTU \
            less the encapsulation overhead unless --mtu is given.\n\n\
            --attachable opens the tenant to hosts, as Docker's `docker network create \
            --attachable` lets containers on any node join a network: the Docker driver and \
            the CNI plugin on an allowed host may then create endpoints of the tenant on that \
            host (and reserve its addresses) with the host's own certificate. Without it only \
            administrators attach endpoints.\n\n\
            Segment types: vxlan (default) and gre cross the underlay in tunnels; vlan puts the \
            tenant's frames on the hosts' uplinks (the agent's `uplink`) with an 802.1Q tag; \
            flat puts them there untagged, like a cloud's flat provider network, so machines \
            on that wire that know nothing of ovl share the segment. A cluster has at most one \
            flat tenant (the wire has one untagged segment).",
        after_help = "Examples:\n  \
            ovl tenant create blue --subnet 10.10.0.0/24\n  \
            ovl tenant create red --subnet 10.20.0.0/16 --type gre --key 4242\n  \
            ovl tenant create green --subnet 10.30.0.0/24 --type vlan --vlan 300\n  \
            ovl tenant create lan --subnet 192.168.50.0/24 --type flat\n  \
            ovl tenant create web --subnet 10.40.0.0/24 --attachable\n  \
            ovl tenant create db --subnet 10.50.0.0/24 --attachable=node1,node2"
    )]
    Create(TenantCreateArgs),

    /// List tenants
    #[command(
        visible_alias = "ls",
        after_help = "Example:\n  ovl tenant list\n  ovl tenant ls -q\n  ovl tenant list -o json"
    )]
    List,

    /// Show one tenant
    #[command(after_help = "Example:\n  ovl tenant show blue")]
    Show(NameArg),

    /// Change a tenant's gateway settings (NAT, gateway host) or which hosts may attach to it
    #[command(
        long_about = "Change a tenant's gateway settings, or which hosts may attach to it. \
            --nat on masquerades the tenant's traffic to the outside behind its gateway host's \
            underlay address; --nat off stops it (published ports keep working). \
            --gateway-host HOST moves the tenant's router to HOST now; --gateway-host auto lets \
            the controller choose (the router stays where it is until that host is lost).\n\n\
            --attachable sets which hosts may create endpoints of the tenant on themselves with \
            their own certificate (the Docker driver, the CNI plugin), like Docker's \
            `--attachable`: '*' for every host, a comma-separated list of hosts, or none for \
            administrators only. Addresses that hosts left out had reserved are released; \
            their endpoints stay. It is a change on its own, without --nat or --gateway-host.",
        after_help = "Examples:\n  ovl tenant set blue --nat on\n  \
            ovl tenant set blue --gateway-host node2 --wait\n  \
            ovl tenant set blue --gateway-host auto\n  \
            ovl tenant set blue --attachable '*'\n  \
            ovl tenant set blue --attachable node1,node2\n  \
            ovl tenant set blue --attachable none"
    )]
    Set(TenantSetArgs),

    /// Delete a tenant (with --force, also its endpoints)
    #[command(
        visible_alias = "rm",
        long_about = "Delete a tenant. The controller refuses while the tenant still has \
            endpoints (exit code 4); --force deletes those endpoints too, tearing down their \
            interfaces on their hosts. With --wait, ovl returns once every host that carried \
            the tenant has applied the change.",
        after_help = "Examples:\n  ovl tenant delete blue\n  ovl tenant delete blue --force --wait"
    )]
    Delete(TenantDeleteArgs),
}

/// `ovl tenant create`.
#[derive(Debug, Clone, Args)]
pub struct TenantCreateArgs {
    /// Tenant name: 1-32 of a-z, 0-9 and '-', starting with a letter
    pub name: String,

    /// The tenant's IPv4 subnet, as a network address and prefix (e.g. 10.10.0.0/24)
    #[arg(long, value_name = "CIDR")]
    pub subnet: String,

    /// Segment type: vxlan or gre (tunnels), vlan (tagged on the uplink) or flat (untagged on
    /// the uplink) [default: vxlan]
    #[arg(
        long = "type",
        value_name = "TYPE",
        value_parser = clap::builder::PossibleValuesParser::new(SEGMENT_TYPES)
    )]
    pub segment: Option<String>,

    /// VXLAN VNI or GRE key (allocated when absent)
    #[arg(long, visible_alias = "key", value_name = "N")]
    pub vni: Option<u32>,

    /// VLAN tag 1-4094: the local tag on br-int, and for --type vlan the tag on the wire
    /// (allocated when absent; a flat tenant's never reaches the wire)
    #[arg(long, value_name = "TAG")]
    pub vlan: Option<u32>,

    /// Endpoint MTU in bytes (default: underlay MTU less the encapsulation overhead)
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u32>,

    /// Masquerade the tenant's traffic to the outside behind its gateway host's underlay
    /// address (SNAT)
    #[arg(long)]
    pub nat: bool,

    /// The host to run the tenant's router on (default: the controller chooses the host with
    /// the most endpoints of the tenant)
    #[arg(long, value_name = "HOST")]
    pub gateway_host: Option<String>,

    /// Let hosts attach endpoints to the tenant with their own certificate (the Docker
    /// driver, the CNI plugin), like Docker's --attachable: every host, or only HOSTS
    /// (comma-separated) with --attachable=HOSTS [default: administrators only]
    #[arg(
        long,
        value_name = "HOSTS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "*"
    )]
    pub attachable: Option<String>,
}

/// The values `--type` takes (checked again, with the rest of the request, by
/// [`crate::request`]).
pub const SEGMENT_TYPES: [&str; 4] = ["vxlan", "gre", "vlan", "flat"];

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `ovl tenant set`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("change").required(true).multiple(true).args(["nat", "gateway_host", "attachable"])))]
pub struct TenantSetArgs {
    /// The tenant to change
    pub name: String,

    /// Masquerade the tenant's traffic to the outside (on) or not (off)
    #[arg(long, value_enum, value_name = "on|off")]
    pub nat: Option<OnOff>,

    /// Move the tenant's router to HOST, or let the controller choose (auto)
    #[arg(long, value_name = "HOST|auto")]
    pub gateway_host: Option<String>,

    /// Which hosts may attach endpoints with their own certificate (the Docker driver, the
    /// CNI plugin): '*' for every host, a comma-separated list, or none for administrators
    /// only
    #[arg(long, value_name = "HOSTS|'*'|none", conflicts_with_all = ["nat", "gateway_host"])]
    pub attachable: Option<String>,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `ovl trace`
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("transport").args(["tcp", "udp", "icmp"])))]
pub struct TraceArgs {
    /// The endpoint the packet leaves from
    pub endpoint: String,
    /// Where it goes: an IPv4 address (an endpoint's, the tenant's gateway, or outside the
    /// tenant's subnet through its router) or an endpoint's name
    pub dest: String,
    /// A TCP packet to this port
    #[arg(long, value_name = "PORT")]
    pub tcp: Option<u16>,
    /// A UDP packet to this port
    #[arg(long, value_name = "PORT")]
    pub udp: Option<u16>,
    /// An ICMP echo request (the default)
    #[arg(long)]
    pub icmp: bool,
    /// The packet's IP size in bytes; a packet larger than the tenant's MTU stops at the
    /// source [default: 64]
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u32>,
    /// Also print what each host's Open vSwitch printed (`ofproto/trace`), after the verdict
    #[arg(long)]
    pub ovs: bool,
}

/// `ovl publish` and `ovl unpublish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The endpoint whose port to publish
    pub endpoint: String,

    /// HOSTPORT:PORT[/tcp|/udp] to publish; HOSTPORT[/tcp|/udp] to unpublish
    #[arg(value_name = "PORTS")]
    pub ports: String,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `ovl tenant delete`.
#[derive(Debug, Clone, Args)]
pub struct TenantDeleteArgs {
    /// The tenant to delete
    pub name: String,

    /// Also delete the tenant's endpoints (their interfaces are removed from their hosts)
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// A single object name.
#[derive(Debug, Clone, Args)]
pub struct NameArg {
    /// The object's name
    pub name: String,
}

/// `--wait[=DURATION]`, shared by commands whose effect a host has to apply.
#[derive(Debug, Clone, Default, Args)]
pub struct WaitArgs {
    /// Wait until the host(s) applied the change, printing progress to stderr; gives up after
    /// 60s, or after DURATION with --wait DURATION (or --wait=DURATION)
    #[arg(
        long,
        value_name = "DURATION",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "60s",
        value_parser = parse_duration
    )]
    pub wait: Option<Duration>,
}

/// `ovl host …`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// List hosts with their session state
    #[command(
        visible_alias = "ls",
        after_help = "Example:\n  ovl host list\n  ovl host ls -q"
    )]
    List,

    /// Show one host: addresses, capabilities, session and apply state, errors
    #[command(after_help = "Example:\n  ovl host show node1")]
    Show(NameArg),

    /// Stop placing new endpoints and routers on a host; its routers move away
    #[command(
        long_about = "Drain a host before maintenance or removal. The controller refuses new \
            endpoints on it (naming the host and this command's opposite), and moves every \
            tenant router it carries to the tenant's configured gateway host, else to the \
            active host with the most endpoints of the tenant (a tenant whose endpoints are \
            all on drained hosts keeps its router). Endpoints already on the host stay and \
            keep working. `ovl host ls` shows the host as drained. Draining a drained host \
            changes nothing.",
        after_help = "Examples:\n  ovl host drain node3\n  ovl host drain node3 --wait\n  ovl host undrain node3"
    )]
    Drain(HostStateArgs),

    /// Let a drained host take new endpoints and routers again
    #[command(
        long_about = "Undrain a host: it takes new endpoints again and may be chosen for \
            routers of tenants placed from now on. Routers that moved away while it was \
            drained stay where they are (moving them back would interrupt their tenants \
            again); a tenant whose configured gateway host it is gets its router back from \
            the failover task.",
        after_help = "Example:\n  ovl host undrain node3"
    )]
    Undrain(HostStateArgs),

    /// Remove a host from the cluster and revoke its certificate
    #[command(
        visible_alias = "rm",
        long_about = "Delete a host: its endpoints (only with --force; without it the \
            controller refuses while the host has endpoints, exit code 4, so a typo cannot \
            delete them), its address reservations and its registration go, its routers \
            move to other hosts, and every certificate its agent used is revoked: the \
            controller refuses it on every connection from then on (agent sessions and the \
            host's own tools), and ends the host's open sessions at once. The host's data \
            plane is not touched (the agent is cut off): run `ovl-agent cleanup` on it, or \
            `deploy/install.sh --uninstall --purge`. To bring the machine back, join it \
            again with a new token: it is the certificate that is revoked, not the name.",
        after_help = "Examples:\n  ovl host drain node3 && ovl host delete node3\n  ovl host delete node3 --force\n  ovl host delete node3 --force -o json"
    )]
    Delete(HostDeleteArgs),
}

/// `ovl host drain|undrain`.
#[derive(Debug, Clone, Args)]
pub struct HostStateArgs {
    /// The host, as `ovl host ls` names it
    pub name: String,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `ovl host delete`.
#[derive(Debug, Clone, Args)]
pub struct HostDeleteArgs {
    /// The host, as `ovl host ls` names it
    pub name: String,

    /// Also delete the host's endpoints (their addresses and MACs are freed)
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `ovl endpoint …`
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Attach a container network namespace to a tenant
    #[command(
        long_about = "Attach a container network namespace on a host to a tenant. The agent \
            on the host creates a veth pair, plugs one end into br-int with the tenant's tag, \
            and moves the other into the namespace as --ifname (eth0) with the endpoint's MAC, \
            address, MTU and a default route via the tenant's gateway.\n\n\
            Name the namespace with exactly one of --netns (a name from `ip netns`, or a path \
            when the value contains '/'), --pid (the namespace of that process) or --docker \
            (a container's name or id).",
        after_help = "Examples:\n  \
            ovl endpoint create blue --host node1 --name web1 --netns web1\n  \
            ovl endpoint create blue --host node1 --name db1 --docker db --ip 10.10.0.20 --wait\n  \
            ovl endpoint create blue --host node2 --name job7 --pid 4242 --ifname ovl0"
    )]
    Create(EndpointCreateArgs),

    /// List endpoints, optionally of one tenant and/or on one host
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  ovl endpoint list\n  ovl endpoint list --tenant blue --host node1"
    )]
    List(EndpointListArgs),

    /// Show one endpoint with its addressing and its host's apply state
    #[command(after_help = "Example:\n  ovl endpoint show web1")]
    Show(NameArg),

    /// Delete an endpoint (its interfaces are removed from its host)
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  ovl endpoint delete web1 --wait\n  ovl endpoint rm web1 --wait 10s"
    )]
    Delete(EndpointDeleteArgs),
}

/// `ovl endpoint create`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["netns", "pid", "docker"])))]
pub struct EndpointCreateArgs {
    /// The tenant to attach to
    pub tenant: String,

    /// The host the namespace lives on
    #[arg(long, value_name = "HOST")]
    pub host: String,

    /// Endpoint name, unique in the cluster
    #[arg(long, value_name = "NAME")]
    pub name: String,

    /// Network namespace: a name (as `ip netns add NAME` makes) or, if it contains '/', a path
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,

    /// The network namespace of this process
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// The network namespace of this Docker container (name or id)
    #[arg(long, value_name = "CONTAINER")]
    pub docker: Option<String>,

    /// Interface name inside the namespace [default: eth0]
    #[arg(long, value_name = "NAME")]
    pub ifname: Option<String>,

    /// A fixed IPv4 address in the tenant's subnet, without prefix (allocated when absent)
    #[arg(long, value_name = "ADDR")]
    pub ip: Option<String>,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `ovl endpoint list`.
#[derive(Debug, Clone, Args)]
pub struct EndpointListArgs {
    /// Only endpoints of this tenant
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,

    /// Only endpoints on this host
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

/// `ovl endpoint delete`.
#[derive(Debug, Clone, Args)]
pub struct EndpointDeleteArgs {
    /// The endpoint to delete
    pub name: String,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Parses `30s`, `2m`, `500ms` (humantime syntax) or a bare number of seconds.
/// Lets `--wait 10s` mean `--wait=10s`. `--wait` takes an optional value, and clap cannot tell
/// an optional value from the positional argument after it, so the value must be joined with
/// `=`; this joins a `--wait` with the next argument when that is a duration with a unit
/// (`10s`, `2m`, `500ms`). No other argument looks like one: names start with a letter, and
/// ports have no unit.
pub fn join_wait_values(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        let is_duration = |next: &OsString| {
            next.to_str().is_some_and(|n| {
                n.chars().next().is_some_and(|c| c.is_ascii_digit())
                    && n.chars().any(|c| c.is_ascii_alphabetic())
                    && humantime::parse_duration(n).is_ok()
            })
        };
        if arg == "--wait" && args.peek().is_some_and(is_duration) {
            let mut joined = OsString::from("--wait=");
            joined.push(args.next().expect("peeked"));
            out.push(joined);
        } else {
            out.push(arg);
        }
    }
    out
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 30s, 2m or 500ms: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    /// Every subcommand, option and value is described in `--help` (the rule is
    /// `ovl_common::cli_docs::help_gaps`, which the daemons are held to as well).
    #[test]
    fn help_leaves_nothing_unsaid() {
        use clap::CommandFactory;
        ovl_common::cli_docs::assert_no_help_gaps(&Cli::command());
    }

    fn joined(args: &[&str]) -> Vec<String> {
        join_wait_values(args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn a_wait_duration_may_follow_after_a_space() {
        assert_eq!(
            joined(&["ovl", "endpoint", "rm", "web1", "--wait", "10s"]),
            ["ovl", "endpoint", "rm", "web1", "--wait=10s"]
        );
        // Not a duration: a name, a bare number (a port), another flag, or nothing.
        for args in [
            &["ovl", "tenant", "delete", "--wait", "blue"][..],
            &["ovl", "unpublish", "web1", "--wait", "8080"],
            &["ovl", "endpoint", "delete", "--wait", "--force"],
            &["ovl", "endpoint", "delete", "web1", "--wait"],
        ] {
            assert_eq!(joined(args), args, "{args:?}");
        }
        let cli = Cli::try_parse_from(joined(&["ovl", "endpoint", "rm", "web1", "--wait", "2m"]))
            .unwrap();
        let Command::Endpoint(EndpointCommand::Delete(d)) = cli.command else {
            panic!("not an endpoint delete");
        };
        assert_eq!(d.wait.wait, Some(Duration::from_secs(120)));
    }

    #[test]
    fn lists_and_deletes_have_short_aliases_and_q_prints_names() {
        let cli = Cli::try_parse_from(["ovl", "tenant", "ls", "-q"]).unwrap();
        assert!(matches!(cli.command, Command::Tenant(TenantCommand::List)));
        assert_eq!(cli.global.format(), OutputFormat::Name);
        let cli = Cli::try_parse_from(["ovl", "endpoint", "ls", "--host", "h1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Endpoint(EndpointCommand::List(_))
        ));
        let cli = Cli::try_parse_from(["ovl", "host", "ls", "-o", "json"]).unwrap();
        assert_eq!(cli.global.format(), OutputFormat::Json);
        let cli = Cli::try_parse_from(["ovl", "tenant", "rm", "blue", "--force"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Tenant(TenantCommand::Delete(_))
        ));
    }
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ovl").chain(args.iter().copied()))
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["tenant", "list", "-o", "json", "--controller", "c:1"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.controller.as_deref(), Some("c:1"));
        assert_eq!(cli.global.timeout, Duration::from_secs(30));
        assert_eq!(cli.global.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn key_is_an_alias_of_vni() {
        let cli = parse(&[
            "tenant",
            "create",
            "r",
            "--subnet",
            "10.0.0.0/24",
            "--key",
            "7",
        ])
        .unwrap();
        match cli.command {
            Command::Tenant(TenantCommand::Create(a)) => assert_eq!(a.vni, Some(7)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn endpoint_needs_exactly_one_target() {
        let base = [
            "endpoint", "create", "blue", "--host", "h1", "--name", "web1",
        ];
        let e = parse(&base).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--netns"), "{e}");

        let mut two = base.to_vec();
        two.extend(["--netns", "x", "--pid", "3"]);
        assert_eq!(parse(&two).unwrap_err().kind(), ErrorKind::ArgumentConflict);

        let mut one = base.to_vec();
        one.extend(["--docker", "db"]);
        parse(&one).unwrap();
    }

    #[test]
    fn wait_takes_an_optional_duration_after_equals() {
        let cli = parse(&["endpoint", "delete", "--wait", "web1"]).unwrap();
        match cli.command {
            Command::Endpoint(EndpointCommand::Delete(a)) => {
                assert_eq!(a.name, "web1");
                assert_eq!(a.wait.wait, Some(Duration::from_secs(60)));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&["tenant", "delete", "blue", "--force", "--wait=2m"]).unwrap();
        match cli.command {
            Command::Tenant(TenantCommand::Delete(a)) => {
                assert!(a.force);
                assert_eq!(a.wait.wait, Some(Duration::from_secs(120)));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&["tenant", "delete", "blue"]).unwrap();
        match cli.command {
            Command::Tenant(TenantCommand::Delete(a)) => assert_eq!(a.wait.wait, None),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").unwrap_err().contains("'soon'"));
        let e = parse(&["status", "--timeout", "soon"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn help_teaches_exit_codes_and_examples() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("OVL_CONTROLLER"), "{help}");
        let mut cmd = Cli::command();
        let create = cmd
            .find_subcommand_mut("endpoint")
            .and_then(|c| c.find_subcommand_mut("create"))
            .expect("endpoint create exists");
        let help = create.render_long_help().to_string();
        assert!(help.contains("Examples:"), "{help}");
        assert!(help.contains("--docker"), "{help}");
        let mut cmd = Cli::command();
        let delete = cmd
            .find_subcommand_mut("tenant")
            .and_then(|c| c.find_subcommand_mut("delete"))
            .expect("tenant delete exists");
        let help = delete.render_long_help().to_string();
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains("--force deletes those endpoints too"),
            "{help}"
        );
        for sub in ["create", "set"] {
            let mut cmd = Cli::command();
            let help = cmd
                .find_subcommand_mut("tenant")
                .and_then(|c| c.find_subcommand_mut(sub))
                .expect("tenant subcommand exists")
                .render_long_help()
                .to_string();
            let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
            for phrase in [
                "--attachable",
                "Docker's",
                "the Docker driver, the CNI plugin",
            ] {
                assert!(flat.contains(phrase), "tenant {sub}: {phrase}: {help}");
            }
        }
    }

    #[test]
    fn attachable_takes_an_optional_host_list_on_create() {
        let tenant_create = |extra: &[&str]| {
            let mut args = vec!["tenant", "create", "web", "--subnet", "10.0.0.0/24"];
            args.extend_from_slice(extra);
            match parse(&args).unwrap().command {
                Command::Tenant(TenantCommand::Create(a)) => a.attachable,
                other => panic!("parsed as {other:?}"),
            }
        };
        assert_eq!(tenant_create(&[]), None);
        assert_eq!(tenant_create(&["--attachable"]).as_deref(), Some("*"));
        assert_eq!(
            tenant_create(&["--attachable=h1,h2"]).as_deref(),
            Some("h1,h2")
        );
        let e = parse(&["tenant", "set", "web"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MissingRequiredArgument);
    }
}
