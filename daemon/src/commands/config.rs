//! `imagegate config`.

use std::path::Path;

use anyhow::{Context as _, Result};

/// `imagegate config check`: everything the daemon loads before it starts, loaded the same way.
pub fn config_check(file: &Path) -> Result<i32> {
    let config = imagegate::config::Config::load(file)?;
    let policy = imagegate::policy::Policy::load(&config.policy)?;
    if let Some(path) = &config.registry.docker_config {
        imagegate::discover::Credentials::from_docker_config(path)
            .with_context(|| format!("{}: registry.docker_config", file.display()))?;
    }
    println!(
        "{}: ok (mode {}, backend {}, metrics {})\n{}: ok (policy {})",
        file.display(),
        serde_json::to_value(config.mode)?.as_str().unwrap_or("?"),
        serde_json::to_value(config.backend)?
            .as_str()
            .unwrap_or("?"),
        config.metrics_listen,
        config.policy.display(),
        policy.hash,
    );
    Ok(0)
}
