//! The pharmacy counter's command-line client for the relay. A skeleton: the counter workflow
//! (eligibility, scanning the 控え, receive, dispense, offline fallback) arrives with issue 8.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "pharmacy-client",
    version,
    about = "薬局窓口用クライアント (pharmacy counter client for the e-prescription relay)",
    long_about = "The pharmacy counter's client for the e-prescription relay. Not yet functional: \
                  until it is, use the relay's HTTP API (see README.md and /docs on the relay)."
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!(
        "pharmacy-client: no commands yet; see `pharmacy-client --help` and the relay's /docs"
    );
    std::process::exit(2);
}
