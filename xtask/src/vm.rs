//! QEMU guests for the kernel suites (placeholder until the VM harness lands).

use anyhow::Result;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KernelSeries {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
}

impl std::fmt::Display for KernelSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
        })
    }
}

pub fn test(_kernel: KernelSeries) -> Result<()> {
    Ok(())
}

pub fn bench() -> Result<()> {
    Ok(())
}
