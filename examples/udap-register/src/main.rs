//! `udap-register`: registers an app with a UDAP server and, with
//! `--token`, gets a `client_credentials` token. See the crate docs.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = careconnect_udap_register::Args::parse();
    let json = args.json;
    let report = careconnect_udap_register::run(&args).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        for line in report.lines() {
            println!("{line}");
        }
    }
    Ok(())
}
