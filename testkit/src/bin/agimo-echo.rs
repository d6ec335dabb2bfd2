//! `agimo-echo`: the echo backend as a program, for the example config and
//! benchmarks. Serves HTTP/1.1 and h2c on each `--listen` address.

use clap::Parser;

#[derive(Parser)]
#[command(about = "An HTTP echo backend: answers with JSON describing each request")]
struct Args {
    /// Address to listen on; repeat for several.
    #[arg(long, required = true)]
    listen: Vec<std::net::SocketAddr>,
    /// Name reported in every reply (`backend`), to tell backends apart.
    #[arg(long, default_value = "echo")]
    name: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut servers = Vec::new();
    for addr in &args.listen {
        let echo = agimo_testkit::echo::spawn(*addr, &args.name).await?;
        eprintln!("agimo-echo {}: listening on {}", args.name, echo.addr);
        servers.push(echo);
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
