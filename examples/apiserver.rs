//! Runs the Kubernetes API server double from `plugsync::testkit::apiserver` until Ctrl-C.
//!
//! ```sh
//! cargo run --example apiserver -- --port 0 --kubeconfig /tmp/double.kubeconfig --namespace dify
//! export KUBECONFIG=/tmp/double.kubeconfig
//! kubectl get ns
//! ```

use std::path::PathBuf;

use clap::Parser;
use plugsync::testkit::apiserver::{ApiServer, Options};

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
    // Later: `--simulate-workloads` (Deployments become available, Jobs complete) is added
    // here, and started below once the server is up.
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
    // Workload simulation (a later `--simulate-workloads`) would start here.
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
