//! The daemon's benchmarks on this machine (fanotify backend, private containerd, local
//! registry): pull-to-verified latency (alone, and beside a slow registry's pending images),
//! container start with the daemon versus without (and the daemon's start to ready), and 500
//! images / 5,000 layers (memory, startup reconciliation cold and cached, reloads dropping a key
//! and with every verdict cached). They live in `daemon/tests/daemon_bench.rs`.

use anyhow::Result;

use crate::bench_verify::run_bench_test;

pub fn run() -> Result<()> {
    std::env::set_var("IMAGEGATE_REQUIRE_REGISTRY", "1");
    let pull = run_bench_test(
        "daemon_bench",
        "pull_to_verified",
        "daemon: pull completion to the layer in the verified table",
    );
    let slow = run_bench_test(
        "daemon_bench",
        "pull_to_verified_beside_a_slow_registry",
        "daemon: pull completion to verified while a slow registry's images are pending",
    );
    let start = run_bench_test(
        "daemon_bench",
        "container_start",
        "daemon: container start in enforce mode vs no daemon, daemon start to ready",
    );
    let scale = run_bench_test(
        "daemon_bench",
        "scale_500",
        "daemon: 500 images / 5,000 layers, reloads",
    );
    let cri = run_bench_test(
        "daemon_bench",
        "cri_pod_start",
        "daemon: CRI pod start (sandbox and one container) in enforce mode vs no daemon",
    );
    pull.and(slow).and(start).and(scale).and(cri)
}
