//! Questions an operator asks: `doctor` (this node), `status` and `explain` (the running daemon),
//! `verify` (a registry, without the daemon).

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, Result};
use imagegate::doctor;

/// `imagegate doctor`: every check, as a table or JSON.
pub fn doctor(
    json: bool,
    pin_dir: &Path,
    containerd_config: &Path,
    containerd: &Path,
) -> Result<()> {
    let mut checks = doctor::run(pin_dir);
    checks.push(doctor::pull_verifier(containerd, containerd_config));
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for check in &checks {
            println!(
                "{:<26} {:<4} {}",
                check.capability,
                if check.ok { "yes" } else { "no" },
                check.detail
            );
        }
    }
    Ok(())
}

/// `imagegate status`: the running daemon's status document.
pub fn status(socket: &Path) -> Result<()> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to {} (is the daemon running?)",
            socket.display()
        )
    })?;
    // Nothing to ask: the status document is what a client that sends nothing gets.
    stream
        .shutdown(std::net::Shutdown::Write)
        .context("talking to the daemon")?;
    let mut body = String::new();
    std::io::Read::read_to_string(&mut stream, &mut body)?;
    println!("{body}");
    Ok(())
}

/// `imagegate explain`: its exit code; 2 when the daemon did not answer and no in-process
/// verification could run.
pub fn explain(options: imagegate::explain::Options) -> Result<i32> {
    let (text, code) = imagegate::explain::run(&options)
        .with_context(|| format!("explaining {}", options.target))?;
    print!("{text}");
    std::io::stdout().flush()?;
    Ok(code)
}

/// `imagegate verify`: judges `image` in this process. Insecure registries and credentials may
/// come from the daemon's configuration (`config`), and so does, for a policy naming the
/// public-good root, the root the daemon keeps current (its TUF cache, read only: no refresh).
pub fn verify(
    image: &str,
    policy_path: &Path,
    mut insecure_registries: Vec<String>,
    mut docker_config: Option<std::path::PathBuf>,
    config_path: Option<&Path>,
    json: bool,
) -> Result<i32> {
    let config = match config_path {
        Some(path) => {
            let config =
                imagegate::config::Config::load(path).context("loading the configuration")?;
            insecure_registries.extend(config.registry.insecure.iter().cloned());
            docker_config = docker_config.or_else(|| config.registry.docker_config.clone());
            config
        }
        None => imagegate::config::Config::default(),
    };
    let policy = imagegate::policy::Policy::load(policy_path).context("loading the policy")?;
    imagegate::tuf::install_cached(&config, &policy);
    let verdict = imagegate::explain::verify_in_process(
        image,
        &policy,
        insecure_registries,
        docker_config.as_deref(),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        print!("{verdict}");
    }
    std::io::stdout().flush()?;
    Ok(verdict.exit_code())
}
