//! The `imagegate` binary: one command with subcommands.

mod commands;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use commands::{exit_with, kernel::KernelCommand, offline_verify, Output};
use imagegate::{enforce::bpf, telemetry};

/// Verify container images' signatures and enforce the verdict in the kernel.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report what this kernel supports: BTF, BPF LSM, program load, overlayfs, fanotify.
    Doctor {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Where the BPF backend pins its programs and maps.
        #[arg(long, default_value = bpf::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// containerd's configuration, read to tell whether pulls reach imagegate's verifier.
        #[arg(long, default_value = "/etc/containerd/config.toml")]
        containerd_config: PathBuf,
        /// The containerd binary whose version is checked (2.x has the verifier hook).
        #[arg(long, default_value = "containerd")]
        containerd: PathBuf,
    },
    /// Manage the BPF LSM enforcement backend directly (the daemon does this for you).
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Run the daemon: follow containerd, verify images, keep the kernel's layer table true.
    Daemon {
        /// Configuration file.
        #[arg(long, default_value = imagegate::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Show the running daemon's state: backend, images by verdict, layers, events.
    Status {
        /// The daemon's status socket.
        #[arg(long, default_value = "/run/imagegate/status.sock")]
        socket: PathBuf,
    },
    /// Why is my pod not running? Ask the running daemon about a container (any containerd
    /// namespace it follows; a CRI container id or a unique prefix of one) or an image: its image
    /// and manifest digest, the policy scope and mode, the verdict with every signature found
    /// (where, which authority accepted or rejected it, why) and the container's last denials.
    /// Exit 0 explained, 1 unknown, 2 the daemon did not answer (an image reference is then
    /// verified in process, and the output says so).
    Explain {
        /// A container id (or unique prefix), an image reference, image id or manifest digest.
        target: String,
        /// Only this containerd namespace (e.g. `k8s.io`, `default`).
        #[arg(long)]
        namespace: Option<String>,
        /// The daemon's status socket.
        #[arg(long, default_value = "/run/imagegate/status.sock")]
        socket: PathBuf,
        /// The daemon's configuration: policy and registries when verifying in process.
        #[arg(long, default_value = imagegate::config::DEFAULT_PATH)]
        config: PathBuf,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check an image against the policy without the daemon: resolve it in its registry, find
    /// its signatures and verify them. Exit code 0 trusted, 1 untrusted, 2 error.
    Verify {
        /// Image reference, by tag or digest.
        image: String,
        /// Policy file (TOML, or containers-policy.json by its .json extension).
        #[arg(long, default_value = "/etc/imagegate/policy.toml")]
        policy: PathBuf,
        /// A registry reached over plain HTTP (host:port), repeatable.
        #[arg(long)]
        insecure_registry: Vec<String>,
        /// docker config.json with registry credentials.
        #[arg(long)]
        docker_config: Option<PathBuf>,
        /// Take insecure registries and credentials from this daemon configuration file, and,
        /// for a policy naming the public-good root, the root the daemon keeps under its
        /// state_dir (read only; default configuration's state_dir without this flag).
        #[arg(long)]
        config: Option<PathBuf>,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check a configuration file, or print the configuration reference.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// containerd 2.x's image verifier (its `bindir` plugin runs it before each pull): answers
    /// with the daemon's verdict on `-name REF -digest DIGEST` (the OCI descriptor on stdin),
    /// asking the running daemon on its `verify_socket`, or judging in process when none
    /// listens. Exit 0 admits; otherwise stdout's one line is the reason containerd reports.
    /// Also `--config FILE` (default: `IMAGEGATE_CONFIG`, else /etc/imagegate/imagegate.toml)
    /// and `--timeout-seconds N` (default 8, under containerd's 10 s). The `imagegate` binary
    /// itself, called with `-name` first (a symlink in containerd's verifier `bin_dir`), runs
    /// this. See docs/containerd.md.
    #[command(disable_help_flag = true)]
    ContainerdVerifier {
        /// `-name REF -digest DIGEST -stdin-media-type TYPE [--config FILE] [--timeout-seconds N]`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Verify a detached cosign signature offline (cosign's flag names). Exit 0/1/2.
    VerifySignature(offline_verify::SignatureArgs),
    /// Verify a sigstore bundle offline (cosign's flag names). Exit 0/1/2.
    VerifyBundle(offline_verify::BundleArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load a configuration file and the policy (and credentials) it names, as the daemon
    /// would. Exit 0 when everything loads, 2 with `file:line: field: message` otherwise.
    Check {
        #[arg(default_value = imagegate::config::DEFAULT_PATH)]
        file: PathBuf,
    },
    /// Print the configuration reference (docs/config.md) as Markdown.
    Reference,
}

fn main() {
    // containerd's image verifier hook runs the binary itself with `-name REF ...`.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if imagegate::pullgate::is_containerd_call(&args) {
        std::process::exit(imagegate::pullgate::run_verifier(&args));
    }
    let cli = Cli::parse();
    match &cli.command {
        // The configuration chooses the daemon's log format and filter; one that does not load
        // is reported (and refused) by the daemon itself.
        Command::Daemon { config } => match imagegate::config::Config::load(config) {
            Ok(config) => telemetry::init_with(config.log_format, &config.log_level),
            Err(_) => telemetry::init(),
        },
        // The verifier's stdout is its answer to containerd; it logs nothing.
        Command::ContainerdVerifier { .. } => {}
        _ => telemetry::init(),
    }
    if let Err(error) = run(cli) {
        eprintln!("imagegate: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Doctor {
            json,
            pin_dir,
            containerd_config,
            containerd,
        } => commands::inspect::doctor(json, &pin_dir, &containerd_config, &containerd),
        Command::Kernel(command) => commands::kernel::kernel(command),
        Command::Daemon { config } => commands::daemon::run_daemon(&config),
        Command::Status { socket } => commands::inspect::status(&socket),
        Command::Verify {
            image,
            policy,
            insecure_registry,
            docker_config,
            config,
            output,
        } => exit_with(commands::inspect::verify(
            &image,
            &policy,
            insecure_registry,
            docker_config,
            config.as_deref(),
            matches!(output, Output::Json),
        )),
        Command::Explain {
            target,
            namespace,
            socket,
            config,
            output,
        } => exit_with(commands::inspect::explain(imagegate::explain::Options {
            target,
            namespace,
            socket,
            config,
            json: matches!(output, Output::Json),
        })),
        Command::Config(ConfigCommand::Check { file }) => {
            exit_with(commands::config::config_check(&file))
        }
        Command::Config(ConfigCommand::Reference) => {
            print!("{}", imagegate::config::reference_markdown());
            Ok(())
        }
        Command::ContainerdVerifier { args } => {
            std::process::exit(imagegate::pullgate::run_verifier(&args))
        }
        Command::VerifySignature(args) => exit_with(offline_verify::signature(&args)),
        Command::VerifyBundle(args) => exit_with(offline_verify::bundle(&args)),
    }
}
