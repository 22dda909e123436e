//! containerd's CRI plugin driven as kubelet drives it: a private containerd with the plugin
//! enabled (root and state on its own tmpfs, its own sockets), and a blocking CRI client over
//! containerd's socket (`k8s-cri`'s generated `runtime.v1` API, tonic from containerd-client).
//!
//! Pods use the host's network (no CNI): kubelet's `hostNetwork: true`, which the CRI plugin
//! handles without a network plugin; such a pod gets no hostname, as kubelet sends none.
//!
//! The config is the release's own: `version = 2` for containerd 1.6 and 1.7 (one plugin,
//! `io.containerd.grpc.v1.cri`), `version = 3` for 2.x (`io.containerd.cri.v1.images`,
//! `io.containerd.cri.v1.runtime` and `io.containerd.grpc.v1.cri`).

use std::{collections::HashMap, path::Path, time::Duration};

use containerd_client::tonic::{transport::Channel, Request};
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    ContainerConfig, ContainerMetadata, ContainerStatus, CreateContainerRequest, ExecSyncRequest,
    ExecSyncResponse, ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PullImageRequest, RemoveContainerRequest,
    RemoveImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};

/// The CRI plugin's sections of containerd's config for the release under test
/// ([`super::containerd::major_version`]): the sandbox image as given, pulls from the plain-HTTP
/// registries listed in `hosts_dir` (`certs.d` layout), runc v2 on overlayfs, the streaming
/// server on a free 127.0.0.1 port, and `restrict_oom_score_adj` (the test process lacks
/// `CAP_SYS_RESOURCE` in some sandboxes, where runc could not lower the score).
/// `image_settings` are more keys (TOML lines, each ending in a newline) of the plugin holding
/// the image settings: `io.containerd.grpc.v1.cri` on 1.x, `io.containerd.cri.v1.images` on 2.x
/// (e.g. `use_local_image_pull = true`).
pub fn config(
    sandbox_image: &str,
    hosts_dir: &Path,
    cni_dir: &Path,
    image_settings: &str,
) -> String {
    if super::containerd::major_version() >= 2 {
        config_v3(sandbox_image, hosts_dir, cni_dir, image_settings)
    } else {
        config_v2(sandbox_image, hosts_dir, cni_dir, image_settings)
    }
}

/// containerd 1.6 / 1.7 (`version = 2`): one plugin, `io.containerd.grpc.v1.cri`.
fn config_v2(
    sandbox_image: &str,
    hosts_dir: &Path,
    cni_dir: &Path,
    image_settings: &str,
) -> String {
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n{image_settings}\
         \x20 sandbox_image = \"{sandbox_image}\"\n\
         \x20 restrict_oom_score_adj = true\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"0\"\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         \x20   snapshotter = \"overlayfs\"\n\
         \x20   default_runtime_name = \"runc\"\n\
         \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
         \x20     runtime_type = \"io.containerd.runc.v2\"\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         \x20   bin_dir = \"{cni}/bin\"\n\
         \x20   conf_dir = \"{cni}/conf\"\n\
         \x20 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n\
         \x20   config_path = \"{hosts}\"\n",
        cni = cni_dir.display(),
        hosts = hosts_dir.display(),
    )
}

/// containerd 2.x (`version = 3`): the same settings split over its three CRI plugins (keys as
/// `containerd config default` of 2.1 names them). `io.containerd.cri.v1.images`: the
/// snapshotter, the sandbox image (`pinned_images.sandbox`, once `sandbox_image`) and the
/// registries' `config_path`, which the transfer service's pulls read too
/// (`registry.WithHostDir`); nothing there makes CRI fall back to pulling in the client (unless
/// `image_settings` says so), so `PullImage` goes through the transfer service and its image
/// verifiers. `io.containerd.cri.v1.runtime`: the runtime, `restrict_oom_score_adj` and CNI.
/// `io.containerd.grpc.v1.cri`: the streaming server.
fn config_v3(
    sandbox_image: &str,
    hosts_dir: &Path,
    cni_dir: &Path,
    image_settings: &str,
) -> String {
    format!(
        "[plugins.\"io.containerd.cri.v1.images\"]\n{image_settings}\
         \x20 snapshotter = \"overlayfs\"\n\
         \x20 [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n\
         \x20   sandbox = \"{sandbox_image}\"\n\
         \x20 [plugins.\"io.containerd.cri.v1.images\".registry]\n\
         \x20   config_path = \"{hosts}\"\n\
         [plugins.\"io.containerd.cri.v1.runtime\"]\n\
         \x20 restrict_oom_score_adj = true\n\
         \x20 [plugins.\"io.containerd.cri.v1.runtime\".containerd]\n\
         \x20   default_runtime_name = \"runc\"\n\
         \x20   [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc]\n\
         \x20     runtime_type = \"io.containerd.runc.v2\"\n\
         \x20 [plugins.\"io.containerd.cri.v1.runtime\".cni]\n\
         \x20   bin_dirs = [\"{cni}/bin\"]\n\
         \x20   conf_dir = \"{cni}/conf\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\"]\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"0\"\n",
        cni = cni_dir.display(),
        hosts = hosts_dir.display(),
    )
}

/// Writes `hosts_dir/ADDR/hosts.toml` so that containerd pulls from the registry at `addr`
/// (`127.0.0.1:PORT`) over plain HTTP.
pub fn plain_http_host(hosts_dir: &Path, addr: &str) {
    let dir = hosts_dir.join(addr);
    std::fs::create_dir_all(&dir).expect("hosts dir");
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{addr}\"\n[host.\"http://{addr}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .expect("hosts.toml");
}

/// The labels kubelet puts on a pod's sandbox and containers.
const POD_NAME: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const POD_UID: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// A pod as kubelet knows it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The sandbox id `RunPodSandbox` returned.
    pub sandbox: String,
    config: PodSandboxConfig,
}

/// A blocking CRI client: its own current-thread runtime, so tests need no async.
pub struct Cri {
    runtime: tokio::runtime::Runtime,
    pub runtime_service: RuntimeServiceClient<Channel>,
    pub image_service: ImageServiceClient<Channel>,
    /// Where pods' logs go (`<logs>/<pod uid>/<container>/<attempt>.log`).
    logs: std::path::PathBuf,
}

/// Every CRI call is bounded: a hung containerd fails the test instead of stalling it.
const CALL_LIMIT: Duration = Duration::from_secs(60);

impl Cri {
    /// Connects to the CRI plugin on containerd's socket.
    pub fn connect(socket: &Path, logs: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let channel = runtime
            .block_on(containerd_client::connect(socket))
            .expect("connect to containerd's CRI socket");
        Self {
            runtime,
            runtime_service: RuntimeServiceClient::new(channel.clone()),
            image_service: ImageServiceClient::new(channel),
            logs: logs.to_owned(),
        }
    }

    fn block<T>(
        &self,
        what: &str,
        call: impl std::future::Future<
            Output = Result<
                containerd_client::tonic::Response<T>,
                containerd_client::tonic::Status,
            >,
        >,
    ) -> Result<T, containerd_client::tonic::Status> {
        self.runtime.block_on(async {
            match tokio::time::timeout(CALL_LIMIT, call).await {
                Ok(result) => result.map(containerd_client::tonic::Response::into_inner),
                Err(_) => Err(containerd_client::tonic::Status::deadline_exceeded(
                    format!("CRI {what} took over {CALL_LIMIT:?}"),
                )),
            }
        })
    }

    /// `PullImage`: the image reference (containerd's image id, `sha256:<config digest>`)
    /// kubelet then creates containers from.
    pub fn pull(&mut self, image: &str) -> Result<String, containerd_client::tonic::Status> {
        let mut service = self.image_service.clone();
        let request = PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.block("PullImage", service.pull_image(Request::new(request)))
            .map(|r| r.image_ref)
    }

    /// `RemoveImage` (kubelet's image garbage collection removes by image id).
    pub fn remove_image(&mut self, image: &str) -> Result<(), containerd_client::tonic::Status> {
        let mut service = self.image_service.clone();
        let request = RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
        };
        self.block("RemoveImage", service.remove_image(Request::new(request)))
            .map(|_| ())
    }

    /// [`Self::try_run_pod`], asserting success.
    pub fn run_pod(&mut self, namespace: &str, name: &str) -> Pod {
        let (pod, result) = self.try_run_pod(namespace, name);
        result.unwrap_or_else(|error| panic!("RunPodSandbox {namespace}/{name}: {error}"));
        pod
    }

    /// `RunPodSandbox` of a host-network pod `namespace/name`, labelled as kubelet labels it:
    /// the pod (its `sandbox` empty if the call failed) and the call's result.
    pub fn try_run_pod(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> (Pod, Result<(), containerd_client::tonic::Status>) {
        let uid = format!("uid-{name}-{}", std::process::id());
        let labels = HashMap::from([
            (POD_NAME.to_owned(), name.to_owned()),
            (POD_NAMESPACE.to_owned(), namespace.to_owned()),
            (POD_UID.to_owned(), uid.clone()),
        ]);
        let log_directory = self.logs.join(&uid);
        std::fs::create_dir_all(&log_directory).expect("pod log dir");
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.clone(),
                namespace: namespace.to_owned(),
                attempt: 0,
            }),
            // Host network: kubelet sends no hostname.
            hostname: String::new(),
            log_directory: log_directory.display().to_string(),
            labels,
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut pod = Pod {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid,
            sandbox: String::new(),
            config: config.clone(),
        };
        let mut service = self.runtime_service.clone();
        let request = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        match self.block(
            "RunPodSandbox",
            service.run_pod_sandbox(Request::new(request)),
        ) {
            Ok(response) => {
                pod.sandbox = response.pod_sandbox_id;
                (pod, Ok(()))
            }
            Err(status) => (pod, Err(status)),
        }
    }

    /// `CreateContainer` of container `name` (attempt `attempt`) in `pod` from `image_ref` (the
    /// image id, as kubelet passes it), running `command` or the image's entrypoint; labelled
    /// as kubelet labels it. Returns the container id.
    pub fn create(
        &mut self,
        pod: &Pod,
        name: &str,
        attempt: u32,
        image_ref: &str,
        user_image: &str,
        command: &[&str],
    ) -> Result<String, containerd_client::tonic::Status> {
        let labels = HashMap::from([
            (POD_NAME.to_owned(), pod.name.clone()),
            (POD_NAMESPACE.to_owned(), pod.namespace.clone()),
            (POD_UID.to_owned(), pod.uid.clone()),
            (CONTAINER_NAME.to_owned(), name.to_owned()),
        ]);
        std::fs::create_dir_all(self.logs.join(&pod.uid).join(name)).expect("container log dir");
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_owned(),
                attempt,
            }),
            image: Some(ImageSpec {
                image: image_ref.to_owned(),
                user_specified_image: user_image.to_owned(),
                ..Default::default()
            }),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            log_path: format!("{name}/{attempt}.log"),
            labels,
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut service = self.runtime_service.clone();
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.sandbox.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        self.block(
            "CreateContainer",
            service.create_container(Request::new(request)),
        )
        .map(|r| r.container_id)
    }

    /// `StartContainer`.
    pub fn start(&mut self, id: &str) -> Result<(), containerd_client::tonic::Status> {
        let mut service = self.runtime_service.clone();
        let request = StartContainerRequest {
            container_id: id.to_owned(),
        };
        self.block(
            "StartContainer",
            service.start_container(Request::new(request)),
        )
        .map(|_| ())
    }

    /// `ContainerStatus`.
    pub fn status(&mut self, id: &str) -> ContainerStatus {
        let mut service = self.runtime_service.clone();
        let request = k8s_cri::v1::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        self.block(
            "ContainerStatus",
            service.container_status(Request::new(request)),
        )
        .expect("ContainerStatus")
        .status
        .expect("a status")
    }

    /// Waits (up to 30 s) until the container has exited, and returns its status.
    pub fn wait_exited(&mut self, id: &str) -> ContainerStatus {
        let started = std::time::Instant::now();
        loop {
            let status = self.status(id);
            // CONTAINER_EXITED = 2.
            if status.state == 2 {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "container {id} did not exit: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ExecSync` of `command` in container `id` (a probe, as kubelet runs it).
    pub fn exec_sync(
        &mut self,
        id: &str,
        command: &[&str],
    ) -> Result<ExecSyncResponse, containerd_client::tonic::Status> {
        let mut service = self.runtime_service.clone();
        let request = ExecSyncRequest {
            container_id: id.to_owned(),
            cmd: command.iter().map(|s| (*s).to_owned()).collect(),
            timeout: 20,
        };
        self.block("ExecSync", service.exec_sync(Request::new(request)))
    }

    /// `StopContainer` (with a short grace period), then `RemoveContainer`.
    pub fn remove(&mut self, id: &str) -> Result<(), containerd_client::tonic::Status> {
        let mut service = self.runtime_service.clone();
        let stop = StopContainerRequest {
            container_id: id.to_owned(),
            timeout: 2,
        };
        self.block("StopContainer", service.stop_container(Request::new(stop)))?;
        let remove = RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        self.block(
            "RemoveContainer",
            service.remove_container(Request::new(remove)),
        )
        .map(|_| ())
    }

    /// `StopPodSandbox`, then `RemovePodSandbox` (which removes its containers too).
    pub fn remove_pod(&mut self, pod: &Pod) -> Result<(), containerd_client::tonic::Status> {
        if pod.sandbox.is_empty() {
            return Ok(());
        }
        let mut service = self.runtime_service.clone();
        let stop = StopPodSandboxRequest {
            pod_sandbox_id: pod.sandbox.clone(),
        };
        self.block(
            "StopPodSandbox",
            service.stop_pod_sandbox(Request::new(stop)),
        )?;
        let remove = RemovePodSandboxRequest {
            pod_sandbox_id: pod.sandbox.clone(),
        };
        self.block(
            "RemovePodSandbox",
            service.remove_pod_sandbox(Request::new(remove)),
        )
        .map(|_| ())
    }

    /// `PodSandboxStatus`: whether the sandbox is ready (its pause process runs).
    pub fn pod_ready(&mut self, pod: &Pod) -> bool {
        let mut service = self.runtime_service.clone();
        let request = k8s_cri::v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod.sandbox.clone(),
            verbose: false,
        };
        let status = self
            .block(
                "PodSandboxStatus",
                service.pod_sandbox_status(Request::new(request)),
            )
            .expect("PodSandboxStatus")
            .status
            .expect("a sandbox status");
        // SANDBOX_READY = 0.
        status.state == 0
    }

    /// `ImageStatus`: the id of the image `name` names, if the node has it.
    pub fn image_id(&mut self, name: &str) -> Option<String> {
        let mut service = self.image_service.clone();
        let request = k8s_cri::v1::ImageStatusRequest {
            image: Some(ImageSpec {
                image: name.to_owned(),
                ..Default::default()
            }),
            verbose: false,
        };
        self.block("ImageStatus", service.image_status(Request::new(request)))
            .expect("ImageStatus")
            .image
            .map(|image| image.id)
    }

    /// A container's log as the CRI plugin wrote it (one CRI log line per output line).
    pub fn log(&self, pod: &Pod, name: &str, attempt: u32) -> String {
        std::fs::read_to_string(
            self.logs
                .join(&pod.uid)
                .join(name)
                .join(format!("{attempt}.log")),
        )
        .unwrap_or_default()
    }
}

/// Network, PID and IPC as kubelet asks for a `hostNetwork: true` pod.
fn host_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}
