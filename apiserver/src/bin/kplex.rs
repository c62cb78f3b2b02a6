//! The `kplex` command.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kplex_apiserver::handler::Context;
use kplex_apiserver::storage_config::StorageArgs;
use tokio::signal::unix::{signal, SignalKind};

/// mimalloc: the request path allocates many small, short-lived buffers
/// (JSON values, headers), where it beats glibc's allocator under threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kplex",
    version,
    about = "Many virtual Kubernetes clusters from one API server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the API over HTTPS until SIGTERM or Ctrl-C.
    Serve(ServeArgs),
    /// Runs the shared controllers of every VC against a kplex server (as
    /// `kplex serve` does in its own process by default).
    Controllers {
        /// A system kubeconfig (`kplex serve --write-system-kubeconfig
        /// controllers=PATH` writes one).
        #[arg(long)]
        kubeconfig: PathBuf,
    },
    /// Manages virtual clusters through the admin API.
    Vc {
        /// Admin kubeconfig (default: <data-dir>/admin.kubeconfig).
        #[arg(long, global = true)]
        kubeconfig: Option<PathBuf>,
        /// Data directory whose admin kubeconfig to use.
        #[arg(
            long,
            global = true,
            default_value = "./kplex-data",
            env = "KPLEX_DATA_DIR"
        )]
        data_dir: PathBuf,
        #[command(subcommand)]
        command: VcCommand,
    },
    /// Manages the host clusters VCs' Pods run on, through the admin API.
    Host {
        /// Admin kubeconfig (default: <data-dir>/admin.kubeconfig).
        #[arg(long = "admin-kubeconfig", global = true)]
        admin_kubeconfig: Option<PathBuf>,
        /// Data directory whose admin kubeconfig to use.
        #[arg(
            long,
            global = true,
            default_value = "./kplex-data",
            env = "KPLEX_DATA_DIR"
        )]
        data_dir: PathBuf,
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Runs the syncer (every VC's Pods on their host clusters) against a
    /// kplex server, as `kplex serve` does in its own process by default.
    Syncer {
        /// A system kubeconfig (`kplex serve --write-system-kubeconfig
        /// syncer=PATH` writes one).
        #[arg(long)]
        kubeconfig: PathBuf,
    },
    /// Serves DNS for every VC placed on a host cluster, from that host's
    /// kplex Pods, Services and EndpointSlices: each Pod resolves its own
    /// VC's names (one server per host, see deploy/host/dns.yaml).
    Dns {
        /// The host cluster's kubeconfig (read-only suffices); in a Pod,
        /// its ServiceAccount when unset.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Address and port to answer on, over UDP and TCP.
        #[arg(long, default_value = "0.0.0.0:5353")]
        listen: SocketAddr,
        /// The resolver for names outside every cluster domain (ADDR or
        /// ADDR:PORT; default: the first nameserver of /etc/resolv.conf).
        /// Never the host's cluster DNS: it knows other VCs' names.
        #[arg(long)]
        upstream: Option<String>,
        /// The host cluster's own domain, whose names are never forwarded.
        #[arg(long, default_value = "cluster.local")]
        host_domain: String,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Registers a host cluster.
    Add {
        /// Name (a DNS-1123 label).
        name: String,
        /// The host's kubeconfig (its current context is used).
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Place VCs without spec.hostCluster here.
        #[arg(long)]
        default: bool,
    },
    /// Lists host clusters.
    List,
    /// Removes a host cluster (refused while VCs are placed on it).
    Remove {
        /// Name.
        name: String,
    },
}

#[derive(Subcommand)]
enum VcCommand {
    /// Creates a virtual cluster; with -o, also writes a cluster-admin kubeconfig for it.
    Create {
        /// Name (a DNS-1123 label).
        name: String,
        /// Write a kubeconfig for the VC's first user (group system:masters) here.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// The VC's isolation policy (`spec.isolation`, JSON or YAML flow
        /// text); the safe defaults when unset.
        #[arg(long)]
        isolation: Option<String>,
    },
    /// Lists virtual clusters.
    List,
    /// Deletes a virtual cluster and everything in it.
    Delete {
        /// Name.
        name: String,
    },
    /// Issues a kubeconfig for a user of a virtual cluster.
    Kubeconfig {
        /// Name of the VC.
        name: String,
        /// User name.
        #[arg(long)]
        user: String,
        /// Groups (repeat).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime of the credential.
        #[arg(long)]
        expiration_seconds: Option<u64>,
        /// Write it here (mode 0600) instead of printing it.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// HTTPS port.
    #[arg(long, default_value_t = 6443)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// Address clients reach kplex at: goes into kubeconfigs and the serving
    /// certificate.
    #[arg(long, default_value = "127.0.0.1")]
    advertise_address: String,
    /// Extra names or IPs for the serving certificate.
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Most watches one virtual cluster may hold open; more are refused with
    /// 429 until one ends.
    #[arg(long, default_value_t = kplex_registry::quota::DEFAULT_MAX_WATCHES_PER_VC)]
    max_watches_per_vc: usize,
    /// Bytes (keys and values) a VC may store unless its
    /// `spec.limits.storedBytes` says otherwise: an integer or a quantity.
    #[arg(long, default_value = "1Gi")]
    max_stored_bytes_per_vc: Bytes,
    /// Objects a VC may store unless its `spec.limits.objects` says otherwise.
    #[arg(long, default_value_t = kplex_registry::usage::DEFAULT_OBJECTS)]
    max_objects_per_vc: u64,
    /// Requests per second a VC's tenants may make unless its
    /// `spec.limits.requestsPerSecond` says otherwise (past it: 429).
    #[arg(long, default_value_t = kplex_apiserver::rates::DEFAULT_RATE)]
    max_requests_per_second_per_vc: u32,
    /// Requests above that rate a VC's tenants may make at once unless its
    /// `spec.limits.requestBurst` says otherwise.
    #[arg(long, default_value_t = kplex_apiserver::rates::DEFAULT_BURST)]
    max_request_burst_per_vc: u32,
    /// Requests one VC (or system component) may have waiting for a seat
    /// in a priority level; more get 429 at once.
    #[arg(long, default_value_t = kplex_apiserver::fairness::Config::default().queue_per_flow)]
    max_queued_per_vc: usize,
    /// Longest a request waits for a seat before its 429, in milliseconds.
    #[arg(long, default_value_t = kplex_apiserver::fairness::Config::default().max_wait.as_millis() as u64)]
    max_queue_wait_ms: u64,
    /// Run the shared controllers (Deployments, ReplicaSets, Jobs, garbage
    /// collection, …) in this process. With several kplex processes on one
    /// etcd, one of them runs them at a time (a Lease decides).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    controllers: bool,
    /// Write a system component's kubeconfig (`COMPONENT=PATH`, e.g.
    /// `controllers=ctl.kubeconfig`) for running it in its own process
    /// (`kplex controllers --kubeconfig PATH`). Repeatable.
    #[arg(long = "write-system-kubeconfig", value_name = "COMPONENT=PATH")]
    system_kubeconfigs: Vec<String>,
    /// Run the syncer (every VC's Pods on host clusters) in this process.
    /// With several kplex processes on one etcd, one runs it at a time.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    syncer: bool,
    /// Register this host cluster as `default` at start (replacing the
    /// kubeconfig of a `default` host registered before).
    #[arg(long, value_name = "FILE")]
    host_kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => match serve(args).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Controllers { kubeconfig } => match controllers(&kubeconfig).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Syncer { kubeconfig } => match syncer(&kubeconfig).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Dns {
            kubeconfig,
            listen,
            upstream,
            host_domain,
        } => match dns(kubeconfig, listen, upstream, host_domain).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Host {
            admin_kubeconfig,
            data_dir,
            command,
        } => {
            let kubeconfig = admin_kubeconfig.unwrap_or_else(|| data_dir.join("admin.kubeconfig"));
            match host(&kubeconfig, command).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Vc {
            kubeconfig,
            data_dir,
            command,
        } => {
            let kubeconfig = kubeconfig.unwrap_or_else(|| data_dir.join("admin.kubeconfig"));
            match vc(&kubeconfig, command).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does for
/// kube-apiserver): every client connection and watch holds a descriptor.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the one struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                tracing::debug!(
                    from = limit.rlim_cur,
                    to = limit.rlim_max,
                    "raised the open-file limit"
                );
            }
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    raise_open_file_limit();
    let store = args
        .storage
        .open()
        .await
        .map_err(|e| format!("cannot open storage: {e}"))?;
    let revision = store
        .current_revision()
        .await
        .map_err(|e| format!("storage does not answer: {e}"))?;
    // In-cluster clients of a VC (Pods on hosts) know the API server by
    // the names a cluster gives it.
    let mut names: Vec<String> = [
        "localhost",
        "127.0.0.1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .map(str::to_owned)
    .to_vec();
    names.push(args.advertise_address.clone());
    names.extend(args.tls_sans.iter().cloned());
    let url = format!("https://{}:{}", args.advertise_address, args.port);
    let boot = kplex_apiserver::bootstrap::prepare(&args.storage.data_dir, &names, &url)
        .map_err(|e| format!("cannot prepare certificates: {e}"))?;
    let addr = SocketAddr::new(args.bind_address, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let (ca_file, admin_kubeconfig) = (boot.ca_file.clone(), boot.admin_kubeconfig.clone());
    let metrics = kplex_apiserver::metrics::Metrics::default();
    let store: Arc<dyn kplex_storage::Store> = Arc::new(
        kplex_apiserver::metrics::MeteredStore::new(store, metrics.clone()),
    );
    let tokens = kplex_apiserver::tokens::Tokens::load_or_create(&store)
        .await
        .map_err(|e| format!("cannot prepare the token signing key: {e}"))?;
    let store = kplex_registry::watchcache::WatchCache::start(store).await;
    let catalog = kplex_kinds::catalog::shared();
    let rbac = kplex_rbac::index::start(store.clone());
    let crds = kplex_kinds::custom::start(store.clone());
    let ctx = Arc::new(Context {
        rbac: rbac.clone(),
        crds: crds.clone(),
        metrics,
        registry: kplex_apiserver::virtualclusters::Registry::indexed(store.clone()).await,
        hosts: kplex_apiserver::hostclusters::HostClusters::new(store.clone()),
        tokens: Arc::new(tokens),
        store,
        authority: Arc::new(boot.authority),
        url,
        system_catalog: Arc::new(kplex_apiserver::system::system_catalog(&catalog)),
        catalog,
        stopping: tokio::sync::watch::channel(false).0,
        allocations: Default::default(),
        fairness: kplex_apiserver::fairness::Fairness::new(&kplex_apiserver::fairness::Config {
            queue_per_flow: args.max_queued_per_vc,
            max_wait: std::time::Duration::from_millis(args.max_queue_wait_ms),
            ..Default::default()
        })?,
        watches: Arc::new(kplex_registry::quota::WatchLimits::new(
            args.max_watches_per_vc,
        )),
        rates: Arc::new(kplex_apiserver::rates::RequestRates::new(
            args.max_requests_per_second_per_vc,
            args.max_request_burst_per_vc,
        )),
    });
    ctx.store
        .usage()
        .set_defaults(kplex_registry::usage::StorageLimits {
            bytes: args.max_stored_bytes_per_vc.0,
            objects: args.max_objects_per_vc,
        });
    ctx.store.usage().set_source(ctx.registry.limits_source());
    // A departed VC's policy and custom resources are dropped with it.
    let departures = kplex_apiserver::virtualclusters::departures();
    ctx.store.set_departures(Box::new(move |event| {
        let uid = departures(event)?;
        rbac.forget(&uid);
        crds.forget(&uid);
        Some(uid)
    }));
    kplex_apiserver::system::bootstrap(&ctx)
        .await
        .map_err(|e| format!("cannot prepare the system cluster: {}", e.message))?;
    for request in &args.system_kubeconfigs {
        let (component, path) = request
            .split_once('=')
            .ok_or_else(|| format!("--write-system-kubeconfig {request:?}: want COMPONENT=PATH"))?;
        let config =
            kplex_apiserver::bootstrap::system_kubeconfig(&ctx.authority, component, &ctx.url)
                .map_err(|e| format!("cannot issue the {component} credential: {e}"))?;
        kplex_certs::write_private(std::path::Path::new(path), config.as_bytes())
            .map_err(|e| format!("cannot write {path}: {e}"))?;
        tracing::info!(component, path, "system kubeconfig written");
    }
    if let Some(path) = &args.host_kubeconfig {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ctx.hosts
            .register_default("default", &text)
            .await
            .map_err(|e| format!("--host-kubeconfig: {}", e.message))?;
        tracing::info!(path = %path.display(), "host cluster \"default\" registered");
    }
    let syncer = if args.syncer {
        let config =
            kplex_apiserver::bootstrap::system_kubeconfig(&ctx.authority, "syncer", &ctx.url)
                .map_err(|e| format!("cannot issue the syncer's credential: {e}"))?;
        let options = kplex_syncer::Options::from_kubeconfig_text(&config)
            .await
            .map_err(|e| format!("syncer: {e}"))?;
        let task = tokio::spawn(kplex_syncer::run(options.clone()));
        Some((task, options))
    } else {
        None
    };
    let controllers = if args.controllers {
        let config =
            kplex_apiserver::bootstrap::system_kubeconfig(&ctx.authority, "controllers", &ctx.url)
                .map_err(|e| format!("cannot issue the controllers' credential: {e}"))?;
        let options = kplex_controllers::Options::from_kubeconfig_text(&config)
            .await
            .map_err(|e| format!("controllers: {e}"))?;
        let options = kplex_controllers::Options {
            on_synced: Some(Arc::new(kplex_apiserver::give_back_memory)),
            ..options
        };
        let task = tokio::spawn(kplex_controllers::run(options.clone()));
        Some((task, options))
    } else {
        None
    };
    // On shutdown the controllers stop first and give up their Lease while
    // the server still answers, so another replica takes over at once.
    let shutdown = async move {
        wait_for_shutdown().await;
        if let Some((task, options)) = controllers {
            task.abort();
            kplex_controllers::leader::release(&options).await;
        }
        if let Some((task, options)) = syncer {
            task.abort();
            kplex_syncer::release(&options).await;
        }
    };
    tracing::info!(
        url = %ctx.url,
        %revision,
        ca = %ca_file.display(),
        admin_kubeconfig = %admin_kubeconfig.display(),
        "kplex serving; try: kubectl --kubeconfig {} get --raw /readyz",
        admin_kubeconfig.display()
    );
    kplex_apiserver::server::serve(listener, boot.tls, ctx, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

async fn controllers(kubeconfig: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(kubeconfig)
        .map_err(|e| format!("cannot read {}: {e}", kubeconfig.display()))?;
    let options = kplex_controllers::Options {
        on_synced: Some(Arc::new(kplex_apiserver::give_back_memory)),
        ..kplex_controllers::Options::from_kubeconfig_text(&text).await?
    };
    tokio::select! {
        ended = kplex_controllers::run(options.clone()) => ended,
        _ = wait_for_shutdown() => {
            // Another process may lead at once.
            kplex_controllers::leader::release(&options).await;
            Ok(())
        }
    }
}

async fn syncer(kubeconfig: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(kubeconfig)
        .map_err(|e| format!("cannot read {}: {e}", kubeconfig.display()))?;
    let options = kplex_syncer::Options::from_kubeconfig_text(&text).await?;
    tokio::select! {
        ended = kplex_syncer::run(options.clone()) => ended,
        _ = wait_for_shutdown() => {
            kplex_syncer::release(&options).await;
            Ok(())
        }
    }
}

async fn dns(
    kubeconfig: Option<PathBuf>,
    listen: SocketAddr,
    upstream: Option<String>,
    host_domain: String,
) -> Result<(), String> {
    let config = kplex_syncer::dns::host_config(kubeconfig.as_deref()).await?;
    let upstream = match upstream {
        Some(text) => Some(
            text.parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| format!("--upstream {text}: not an address or address:port"))?,
        ),
        None => kplex_syncer::dns::system_upstream(),
    };
    let options = kplex_syncer::dns::Options {
        config,
        listen,
        upstream,
        host_domain,
    };
    tokio::select! {
        ended = kplex_syncer::dns::run(options) => ended,
        _ = wait_for_shutdown() => Ok(()),
    }
}

async fn vc(kubeconfig: &std::path::Path, command: VcCommand) -> Result<(), String> {
    let client = kplex_apiserver::cli::AdminClient::from_kubeconfig(kubeconfig)?;
    let write = |path: &std::path::Path, text: &str| {
        kplex_certs::write_private(path, text.as_bytes()).map_err(|e| e.to_string())
    };
    match command {
        VcCommand::Create {
            name,
            output,
            isolation,
        } => {
            let mut spec = serde_json::json!({});
            if let Some(text) = isolation {
                spec["isolation"] = kplex_registry::yaml::to_json(text.as_bytes())
                    .map_err(|e| format!("--isolation: {e}"))?;
            }
            let vc = client.create(&name, spec).await?;
            println!("virtualcluster.tenancy.kplex.dev/{name} created");
            println!(
                "endpoint: {}",
                vc["status"]["endpoint"].as_str().unwrap_or("")
            );
            if let Some(path) = output {
                let config = client
                    .kubeconfig(
                        &name,
                        &format!("{name}-admin"),
                        &["system:masters".to_owned()],
                        None,
                    )
                    .await?;
                write(&path, &config)?;
                println!("kubeconfig written to {}", path.display());
            }
        }
        VcCommand::List => {
            let vcs = client.list().await?;
            println!("{:<24} {:<8} {:<50} CREATED", "NAME", "PHASE", "ENDPOINT");
            for vc in vcs {
                println!(
                    "{:<24} {:<8} {:<50} {}",
                    vc["metadata"]["name"].as_str().unwrap_or(""),
                    vc["status"]["phase"].as_str().unwrap_or(""),
                    vc["status"]["endpoint"].as_str().unwrap_or(""),
                    vc["metadata"]["creationTimestamp"].as_str().unwrap_or(""),
                );
            }
        }
        VcCommand::Delete { name } => {
            client.delete(&name).await?;
            println!("virtualcluster.tenancy.kplex.dev/{name} deleted");
        }
        VcCommand::Kubeconfig {
            name,
            user,
            groups,
            expiration_seconds,
            output,
        } => {
            let config = client
                .kubeconfig(&name, &user, &groups, expiration_seconds)
                .await?;
            match output {
                Some(path) => write(&path, &config)?,
                None => print!("{config}"),
            }
        }
    }
    Ok(())
}

async fn host(kubeconfig: &std::path::Path, command: HostCommand) -> Result<(), String> {
    let client = kplex_apiserver::cli::AdminClient::from_kubeconfig(kubeconfig)?;
    match command {
        HostCommand::Add {
            name,
            kubeconfig,
            default,
        } => {
            let text = std::fs::read_to_string(&kubeconfig)
                .map_err(|e| format!("cannot read {}: {e}", kubeconfig.display()))?;
            client.add_host(&name, &text, default).await?;
            println!("hostcluster.tenancy.kplex.dev/{name} created");
        }
        HostCommand::List => {
            println!(
                "{:<20} {:<40} {:<8} {:<10} {:<22} NODES",
                "NAME", "SERVER", "DEFAULT", "REACHABLE", "VERSION"
            );
            for host in client.hosts().await? {
                println!(
                    "{:<20} {:<40} {:<8} {:<10} {:<22} {}",
                    host["metadata"]["name"].as_str().unwrap_or(""),
                    host["spec"]["server"].as_str().unwrap_or(""),
                    host["spec"]["default"].as_bool().unwrap_or(false),
                    host["status"]["reachable"].as_bool().unwrap_or(false),
                    host["status"]["serverVersion"].as_str().unwrap_or(""),
                    host["status"]["nodeCount"].as_i64().unwrap_or(0),
                );
            }
        }
        HostCommand::Remove { name } => {
            client.remove_host(&name).await?;
            println!("hostcluster.tenancy.kplex.dev/{name} deleted");
        }
    }
    Ok(())
}

async fn wait_for_shutdown() {
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
}

/// A size in bytes on the command line: an integer or a quantity (`1Gi`).
#[derive(Clone, Copy, Debug)]
struct Bytes(u64);

impl std::str::FromStr for Bytes {
    type Err = String;
    fn from_str(s: &str) -> Result<Bytes, String> {
        kplex_api::quantity::parse(s)
            .filter(|q| q.0 >= 0 && q.0 % 1000 == 0)
            .and_then(|q| u64::try_from(q.0 / 1000).ok())
            .map(Bytes)
            .ok_or_else(|| format!("{s:?} is not a whole number of bytes (e.g. 1073741824 or 1Gi)"))
    }
}

impl std::fmt::Display for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
