//! `dcutr peer`: registers at the relay, runs DCUtR over the relayed stream,
//! and proves the direct path. (Placeholder: the DCUtR part is wired on top
//! of `dcutr-tokio`.)

/// Run `dcutr peer`.
pub async fn run(args: crate::PeerArgs) -> anyhow::Result<std::process::ExitCode> {
    let _ = args;
    anyhow::bail!("dcutr peer: not wired yet")
}
