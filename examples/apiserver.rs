//! Runs the Kubernetes API server double from `plugsync::testkit::apiserver` until Ctrl-C.
//!
//! ```sh
//! cargo run --example apiserver -- --port 0 --kubeconfig /tmp/double.kubeconfig --namespace dify
//! export KUBECONFIG=/tmp/double.kubeconfig
//! kubectl get ns
//! ```
//!
//! With `--simulate-workloads` it also plays the cluster's job controller, deployment
//! controller and kubelet (see `plugsync::testkit::apiserver::workloads`), so a controller
//! pointed at it sees build Jobs finish and Deployments become available:
//!
//! ```sh
//! cargo run --example apiserver -- --kubeconfig /tmp/double.kubeconfig --namespace dify \
//!     --simulate-workloads --fail-builds broken --fail-first-attempts 1 \
//!     --build-seconds 5 --rollout-seconds 2
//! kubectl get plugins -w
//! ```

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use plugsync::testkit::apiserver::{ApiServer, Options, WorkloadPolicy};

/// Serve the API server double on loopback.
#[derive(Parser, Debug)]
#[command(name = "apiserver")]
struct Args {
    /// Port on 127.0.0.1 (0 = pick a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where to write a kubeconfig pointing at the double.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Namespace of the kubeconfig's context.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Watch history length (events); older resourceVersions get 410 Expired.
    #[arg(long, default_value_t = 1000)]
    history: usize,
    /// Play the job controller, deployment controller and kubelet: build Jobs get a Pod and
    /// complete (or fail), Deployments become available.
    #[arg(long)]
    simulate_workloads: bool,
    /// Builds of Jobs whose name contains this fail (repeatable).
    #[arg(long, value_name = "SUBSTRING", requires = "simulate_workloads")]
    fail_builds: Vec<String>,
    /// The first N attempts of every build fail (`abc` is attempt 1, `abc--2` attempt 2, …).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "simulate_workloads"
    )]
    fail_first_attempts: u32,
    /// How long a simulated build runs.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 5.0,
        requires = "simulate_workloads"
    )]
    build_seconds: f64,
    /// How long a simulated rollout takes.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 2.0,
        requires = "simulate_workloads"
    )]
    rollout_seconds: f64,
    /// Deployments whose name contains this never become available (repeatable).
    #[arg(long, value_name = "SUBSTRING", requires = "simulate_workloads")]
    unavailable_deployments: Vec<String>,
}

/// Seconds from the command line as a Duration (negative or not finite is an error).
fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|e| anyhow::anyhow!("--{flag} {s}: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = ApiServer::start_with(Options {
        port: args.port,
        history: args.history,
        ..Options::default()
    })
    .await?;
    server.write_kubeconfig(&args.kubeconfig, &args.namespace)?;
    println!("{}", server.url());
    println!("export KUBECONFIG={}", args.kubeconfig.display());
    let simulator = if args.simulate_workloads {
        let mut policy = WorkloadPolicy::default()
            .build_duration(seconds("build-seconds", args.build_seconds)?)
            .rollout_duration(seconds("rollout-seconds", args.rollout_seconds)?)
            .fail_first_attempts(args.fail_first_attempts);
        for s in &args.fail_builds {
            policy = policy.fail_builds_matching(s);
        }
        for s in &args.unavailable_deployments {
            policy = policy.unavailable_deployments_matching(s);
        }
        println!("simulating workloads: {policy:?}");
        Some(server.simulate_workloads(policy))
    } else {
        None
    };
    tokio::signal::ctrl_c().await?;
    if let Some(simulator) = simulator {
        simulator.stop().await;
    }
    server.shutdown().await;
    Ok(())
}
