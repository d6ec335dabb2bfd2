//! Agimo's performance harness. One backend, Agimo (standalone), nginx and
//! HAProxy configured as the same reverse proxy, all on loopback, measured
//! interleaved in one run; prints medians and ratios as Markdown tables.
//!
//! ```text
//!  wrk / oha / sockets ──► agimo :18080 ─┐
//!                          nginx :18082 ─┼──► backend (nginx, fixed body) :18081
//!                          haproxy :18083┘    echo (websockets) :18085
//!  h2load (gRPC, h2c)  ──► agimo :18180, nginx :18182, haproxy :18183 ──► echo (gRPC) :18085
//!  oha (HTTPS, by SNI) ──► agimo :18280, nginx :18282, haproxy :18283 ──► backend (TLS) :18086
//! ```
//!
//! Run it with `bench/run`, which installs the tools and builds Agimo first.

mod config;
mod load;
mod peers;
mod procs;
mod scenarios;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(about = "Agimo vs nginx vs HAProxy, side by side on loopback")]
pub struct Opts {
    /// The agimo binary (release build).
    #[arg(long)]
    agimo: PathBuf,
    /// The agimo-echo binary (the websocket backend).
    #[arg(long)]
    echo: PathBuf,
    /// The oha binary (fixed-rate latency).
    #[arg(long, default_value = "oha")]
    oha: PathBuf,
    /// Scratch directory for configurations and logs.
    #[arg(long, default_value = "/tmp/agimo-bench")]
    work: PathBuf,
    /// Rounds of each interleaved comparison; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per load run.
    #[arg(long, default_value_t = 8)]
    seconds: u32,
    /// Route-table sizes for the sweep.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000,10000,50000")]
    routes: Vec<usize>,
    /// Idle connections opened per proxy.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Snapshot swaps under load.
    #[arg(long, default_value_t = 1000)]
    swaps: u64,
    /// Websockets kept open across the swaps.
    #[arg(long, default_value_t = 100)]
    websockets: usize,
    /// Requests held at the scale-to-zero gate, spread over ten hosts.
    #[arg(long, default_value_t = 10_000)]
    held: usize,
    /// Only these scenarios (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Scenario>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Throughput,
    Cpu,
    Latency,
    Routes,
    Idle,
    Swaps,
    Bodies,
    Held,
    Grpc,
    Tls,
}

fn main() -> Result<()> {
    let opts = Opts::parse();
    let _ = std::fs::remove_dir_all(&opts.work);
    std::fs::create_dir_all(&opts.work)?;
    let env = peers::Env { work: opts.work.canonicalize()?, agimo: opts.agimo.clone(), echo: opts.echo.clone() };
    let wanted = |s: Scenario| opts.only.is_empty() || opts.only.contains(&s);
    println!("# Agimo benchmark\n");
    println!("{}\n", scenarios::machine());
    let mut peers = scenarios::Peers::start(&env)?;
    let mut throughput = None;
    if wanted(Scenario::Throughput) {
        throughput = Some(scenarios::throughput(&opts, &mut peers)?);
    }
    if wanted(Scenario::Cpu) {
        scenarios::cpu(&opts, &mut peers)?;
    }
    if wanted(Scenario::Latency) {
        scenarios::latency(&opts, &mut peers, throughput.as_ref())?;
    }
    if wanted(Scenario::Bodies) {
        scenarios::bodies(&opts, &env, &mut peers)?;
    }
    if wanted(Scenario::Idle) {
        scenarios::idle(&opts, &mut peers)?;
    }
    if wanted(Scenario::Swaps) {
        scenarios::swaps(&opts, &env, &mut peers)?;
    }
    if wanted(Scenario::Held) {
        scenarios::held(&opts, &mut peers)?;
    }
    if wanted(Scenario::Grpc) {
        scenarios::grpc(&opts, &env, &mut peers)?;
    }
    if wanted(Scenario::Tls) {
        scenarios::tls(&opts, &mut peers)?;
    }
    if wanted(Scenario::Routes) {
        // The sweep runs an Agimo of its own per size; this one would only take memory.
        peers.stop_agimo();
        scenarios::routes(&opts, &env)?;
    }
    Ok(())
}
