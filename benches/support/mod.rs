//! What the hand-rolled benches share.

/// The CPU model, for every printed figure (these machines differ).
pub(crate) fn cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Runs `bench` on a two-worker runtime (these machines have two cores);
/// exits with status 1 when it could not set itself up (`None`).
#[allow(dead_code)] // not every bench is async
pub(crate) fn run_async(name: &str, bench: impl Future<Output = Option<()>>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    if rt.ok().and_then(|rt| rt.block_on(bench)).is_none() {
        eprintln!("{name} bench: setup failed");
        std::process::exit(1);
    }
}

/// `ring` when compiled in, else the default provider.
#[allow(dead_code)] // not every bench seals
pub(crate) fn ring_or_default() -> &'static dyn careconnect::crypto::CryptoProvider {
    let all = careconnect::crypto::provider::all_providers();
    all.iter()
        .find(|p| p.name() == "ring")
        .or(all.first())
        .copied()
        .unwrap_or(careconnect::crypto::default_provider())
}
