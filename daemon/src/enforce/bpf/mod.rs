//! The BPF LSM backend: loads the programs in `ebpf/programs`, attaches them, pins links and maps
//! under `/sys/fs/bpf/imagegate/`, and edits the maps.
//!
//! Pinning is what keeps enforcement alive when the daemon dies: the kernel keeps a pinned link
//! attached and a pinned map alive with no process holding them. A restarted process finds the
//! pins and opens them instead of loading again, so there is neither a gap nor a duplicate.

pub mod offsets;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::SystemTime,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{links::FdLink, links::PinnedLink, Lsm},
    Btf as AyaBtf, EbpfLoader,
};
use imagegate_common::{
    drift, maps, mode, outside_image, scope_dev, scope_flags, stats, DevIno, Settings, ABI_VERSION,
    OFFSETS_GLOBAL, PROGRAMS,
};

use super::{
    event::boot_time, layer::DeviceNumbering, ContainerState, Decision, Drift, LayerId, LayerState,
    Mode, OutsideImage,
};
use crate::btf::{Btf, BtfError};

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imagegate"));

/// Where the backend pins by default.
pub const DEFAULT_PIN_DIR: &str = imagegate_common::PIN_DIR;

/// Why the BPF backend failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("this imagegate binary was built without its eBPF programs (AYA_BUILD_SKIP)")]
    NoObject,
    #[error("the kernel does not run BPF LSM programs: `bpf` is not in {lsm_file} ({active})")]
    LsmInactive {
        lsm_file: &'static str,
        active: String,
    },
    #[error("reading kernel BTF")]
    Btf(#[from] BtfError),
    #[error("finding kernel struct offsets")]
    Offsets(#[from] offsets::OffsetsError),
    #[error("parsing kernel BTF for program attachment")]
    AyaBtf(#[from] aya::BtfError),
    #[error("loading the eBPF object")]
    Load(#[from] aya::EbpfError),
    #[error("loading or attaching program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {program} is missing from the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("map {map} is missing from the eBPF object or its pins")]
    MissingMap { map: &'static str },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("opening pinned {path}")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map} is full ({capacity} entries)")]
    TableFull { map: &'static str, capacity: u32 },
    #[error(
        "{path} is on btrfs, whose files report their subvolume's device, and this kernel's BTF \
         has no btrfs types to read it with (is the btrfs module's BTF in /sys/kernel/btf?)"
    )]
    BtrfsWithoutBtf { path: PathBuf },
}

/// How the backend came up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Startup {
    /// Programs were loaded and attached by this process.
    Loaded,
    /// Programs were already attached (pinned); this process opened the pins.
    Reattached,
    /// Programs of another build (another [`ABI_VERSION`]) were pinned: this process attached
    /// its own beside them, copied their tables and settings over, then detached them.
    Upgraded,
}

/// The loaded (or re-opened) BPF LSM backend: handles to the pinned maps.
pub struct BpfBackend {
    pin_dir: PathBuf,
    startup: Startup,
    layers: HashMap<MapData, DevIno, u32>,
    containers: HashMap<MapData, DevIno, u32>,
    scopes: HashMap<MapData, DevIno, u32>,
    scope_devs: HashMap<MapData, u64, u32>,
    settings: Array<MapData, Settings>,
    stats: PerCpuArray<MapData, u64>,
    events: RingBuf<MapData>,
    boot_time: SystemTime,
}

/// Counters the programs keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Decisions on a scope's device.
    pub judged: u64,
    /// Denied in enforce mode.
    pub denied: u64,
    /// Would-deny decisions allowed in audit mode.
    pub audited: u64,
    /// Events dropped because the ring buffer was full.
    pub events_lost: u64,
}

fn link_pin(pin_dir: &Path, program: &str) -> PathBuf {
    pin_dir.join(format!("link_{program}"))
}

/// Whether the programs are pinned (installed) under `pin_dir`.
#[must_use]
pub fn installed(pin_dir: &Path) -> bool {
    PROGRAMS
        .iter()
        .all(|(program, _)| link_pin(pin_dir, program).exists())
}

/// Whether `bpf` is in the kernel's active LSM list (mounting securityfs if nobody has).
pub fn lsm_active() -> Result<(), BpfError> {
    const LSM_FILE: &str = "/sys/kernel/security/lsm";
    if !Path::new(LSM_FILE).exists() {
        let _ = nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    let active = std::fs::read_to_string(LSM_FILE).unwrap_or_else(|e| format!("unreadable: {e}"));
    if active.trim().split(',').any(|lsm| lsm == "bpf") {
        Ok(())
    } else {
        Err(BpfError::LsmInactive {
            lsm_file: LSM_FILE,
            active: active.trim().to_owned(),
        })
    }
}

impl BpfBackend {
    /// Loads and attaches the programs, or re-opens them when they are already pinned. Programs
    /// missing from the pins (a partial earlier install) are loaded and pinned; pinned ones are
    /// never replaced, so enforcement has no gap.
    pub fn install(pin_dir: &Path) -> Result<Self, BpfError> {
        if installed(pin_dir) {
            match pinned_abi(pin_dir) {
                Some(ABI_VERSION) => return Self::open(pin_dir, Startup::Reattached),
                found => return Self::upgrade(pin_dir, found),
            }
        }
        let mut backend = Self::attach(pin_dir, Startup::Loaded)?;
        backend.stamp_abi()?;
        Ok(backend)
    }

    /// Replaces the programs pinned under `pin_dir` (of ABI `found`, `None` when unreadable)
    /// with this build's, with no moment where nothing judges: the new programs are attached
    /// (pinned in a staging directory) before the old ones are detached, and get the old
    /// tables and settings first where their layout is unchanged. Where it changed, the new
    /// tables start empty, which denies until the daemon's reconciliation fills them.
    fn upgrade(pin_dir: &Path, found: Option<u32>) -> Result<Self, BpfError> {
        // A sibling of `pin_dir` (the BPF file system refuses names with a dot).
        let mut staging = pin_dir.as_os_str().to_owned();
        staging.push("_upgrade");
        let staging = PathBuf::from(staging);
        // Left by an upgrade that died half-way; the programs under `pin_dir` still judge.
        Self::uninstall(&staging)?;
        let mut backend = Self::attach(&staging, Startup::Upgraded)?;
        let copied = backend.copy_state_from(pin_dir);
        backend.stamp_abi()?;
        Self::uninstall(pin_dir)?;
        move_pins(&staging, pin_dir)?;
        backend.pin_dir = pin_dir.to_owned();
        tracing::info!(
            from_abi = ?found,
            to_abi = ABI_VERSION,
            layers = copied.layers,
            scopes = copied.scopes,
            settings = copied.settings,
            "upgraded the pinned BPF programs in place"
        );
        Ok(backend)
    }

    /// Copies what the old pins under `old_dir` hold into this backend's maps, each map only
    /// if it opens with this build's layout. Best effort: a map that does not is left empty.
    fn copy_state_from(&mut self, old_dir: &Path) -> Copied {
        let layers = copy_entries(old_dir, maps::LAYERS, &mut self.layers);
        copy_entries(old_dir, maps::CONTAINERS, &mut self.containers);
        let scopes = copy_entries(old_dir, maps::SCOPES, &mut self.scopes);
        // A device's flags say how its scopes' keys were built: worth copying only with them.
        if scopes > 0 {
            copy_entries(old_dir, maps::SCOPE_DEVS, &mut self.scope_devs);
        }
        // Mode and drift lead every layout of the settings entry so far: read the old entry
        // with this build's layout, or else as the two words it began as.
        let pinned = || MapData::from_pin(old_dir.join(maps::SETTINGS)).ok();
        let old = pinned()
            .and_then(|data| Array::<MapData, Settings>::try_from(Map::Array(data)).ok())
            .and_then(|old| old.get(&0, 0).ok())
            .map(|raw| [raw.mode, raw.drift])
            .or_else(|| {
                let old = Array::<MapData, [u32; 2]>::try_from(Map::Array(pinned()?)).ok()?;
                old.get(&0, 0).ok()
            });
        let settings = old.is_some_and(|[old_mode, old_drift]| {
            self.write_settings(Settings {
                mode: old_mode,
                drift: old_drift,
                abi: ABI_VERSION,
                // Older programs had no such setting: they allowed whatever a container's
                // layers did not hold. The daemon writes the configured value at start.
                outside_image: outside_image::ALLOW,
            })
            .is_ok()
        });
        Copied {
            layers,
            scopes,
            settings,
        }
    }

    /// Records this build's [`ABI_VERSION`] in the settings entry (the rest unchanged).
    fn stamp_abi(&mut self) -> Result<(), BpfError> {
        self.update_settings(|_| {})
    }

    /// Loads and attaches the programs missing from `pin_dir` and pins them (with their maps)
    /// there, then opens the pins.
    fn attach(pin_dir: &Path, startup: Startup) -> Result<Self, BpfError> {
        if OBJECT.is_empty() {
            return Err(BpfError::NoObject);
        }
        lsm_active()?;
        ensure_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir).map_err(|source| BpfError::Io {
            path: pin_dir.to_owned(),
            source,
        })?;
        load_programs(
            pin_dir,
            |program| !link_pin(pin_dir, program).exists(),
            |program, lsm| {
                let pin = link_pin(pin_dir, program);
                let link_id = lsm
                    .attach()
                    .map_err(|source| BpfError::Program { program, source })?;
                let link = lsm
                    .take_link(link_id)
                    .map_err(|source| BpfError::Program { program, source })?;
                let fd_link: FdLink = link.into();
                fd_link
                    .pin(&pin)
                    .map_err(|source| BpfError::Pin { path: pin, source })?;
                Ok(())
            },
        )?;
        Self::open(pin_dir, startup)
    }

    /// Opens the pinned maps of an installed backend.
    pub fn open(pin_dir: &Path, startup: Startup) -> Result<Self, BpfError> {
        let map = |name: &'static str| -> Result<MapData, BpfError> {
            let path = pin_dir.join(name);
            MapData::from_pin(&path).map_err(open_failed(&path))
        };
        let wrap = |name: &'static str| move |source| BpfError::Map { map: name, source };
        Ok(Self {
            pin_dir: pin_dir.to_owned(),
            startup,
            layers: HashMap::try_from(Map::HashMap(map(maps::LAYERS)?))
                .map_err(wrap(maps::LAYERS))?,
            containers: HashMap::try_from(Map::HashMap(map(maps::CONTAINERS)?))
                .map_err(wrap(maps::CONTAINERS))?,
            scopes: HashMap::try_from(Map::HashMap(map(maps::SCOPES)?))
                .map_err(wrap(maps::SCOPES))?,
            scope_devs: HashMap::try_from(Map::HashMap(map(maps::SCOPE_DEVS)?))
                .map_err(wrap(maps::SCOPE_DEVS))?,
            settings: Array::try_from(Map::Array(map(maps::SETTINGS)?))
                .map_err(wrap(maps::SETTINGS))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(map(maps::STATS)?))
                .map_err(wrap(maps::STATS))?,
            events: RingBuf::try_from(Map::RingBuf(map(maps::EVENTS)?))
                .map_err(wrap(maps::EVENTS))?,
            boot_time: boot_time(),
        })
    }

    /// Detaches the programs and removes every pin. Enforcement stops.
    pub fn uninstall(pin_dir: &Path) -> Result<(), BpfError> {
        if !pin_dir.exists() {
            return Ok(());
        }
        // Unpinning a link whose last reference is the pin detaches its program.
        for (program, _) in PROGRAMS {
            let pin = link_pin(pin_dir, program);
            if pin.exists() {
                match PinnedLink::from_pin(&pin) {
                    Ok(link) => drop(link.unpin()),
                    Err(_) => drop(std::fs::remove_file(&pin)),
                }
            }
        }
        let entries = std::fs::read_dir(pin_dir).map_err(|source| BpfError::Io {
            path: pin_dir.to_owned(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|source| BpfError::Io { path, source })?;
        }
        std::fs::remove_dir(pin_dir).map_err(|source| BpfError::Io {
            path: pin_dir.to_owned(),
            source,
        })
    }

    /// How this process got the backend.
    #[must_use]
    pub const fn startup(&self) -> Startup {
        self.startup
    }

    /// The pin directory.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn write_settings(&mut self, settings: Settings) -> Result<(), BpfError> {
        self.settings
            .set(0, settings, 0)
            .map_err(|source| BpfError::Map {
                map: maps::SETTINGS,
                source,
            })
    }

    fn raw_settings(&self) -> Result<Settings, BpfError> {
        self.settings.get(&0, 0).map_err(|source| BpfError::Map {
            map: maps::SETTINGS,
            source,
        })
    }

    /// Rewrites the settings entry with `change` applied, stamped with this build's ABI.
    fn update_settings(&mut self, change: impl FnOnce(&mut Settings)) -> Result<(), BpfError> {
        let mut settings = self.raw_settings()?;
        change(&mut settings);
        settings.abi = ABI_VERSION;
        self.write_settings(settings)
    }

    /// The settings in force.
    pub fn settings(&self) -> Result<(Mode, Drift), BpfError> {
        let raw = self.raw_settings()?;
        Ok((
            if raw.mode == mode::AUDIT {
                Mode::Audit
            } else {
                Mode::Enforce
            },
            if raw.drift == drift::ALLOW {
                Drift::Allow
            } else {
                Drift::Deny
            },
        ))
    }

    /// Sets audit or enforce mode; takes effect for the next decision.
    pub fn set_mode(&mut self, new: Mode) -> Result<(), BpfError> {
        self.update_settings(|settings| {
            settings.mode = match new {
                Mode::Audit => mode::AUDIT,
                Mode::Enforce => mode::ENFORCE,
            };
        })
    }

    /// Sets the drift policy; takes effect for the next decision.
    pub fn set_drift(&mut self, new: Drift) -> Result<(), BpfError> {
        self.update_settings(|settings| {
            settings.drift = match new {
                Drift::Allow => drift::ALLOW,
                Drift::Deny => drift::DENY,
            };
        })
    }

    /// Sets what trusted containers may execute from outside their image.
    pub fn set_outside_image(&mut self, new: OutsideImage) -> Result<(), BpfError> {
        self.update_settings(|settings| settings.outside_image = new.to_raw())
    }

    /// Records a container root's trust. Takes effect for the next decision.
    pub fn set_container(&mut self, root: LayerId, state: ContainerState) -> Result<(), BpfError> {
        insert_entry(
            &mut self.containers,
            maps::CONTAINERS,
            imagegate_common::MAX_CONTAINERS,
            root,
            state.to_raw(),
        )
    }

    /// Forgets a container root: its processes count as an unjudged container (untrusted).
    pub fn remove_container(&mut self, root: LayerId) -> Result<(), BpfError> {
        remove_entry(&mut self.containers, maps::CONTAINERS, root)
    }

    /// Every container root in the kernel table.
    pub fn containers(&self) -> Result<Vec<(LayerId, ContainerState)>, BpfError> {
        self.containers
            .iter()
            .map(|entry| {
                entry.map(|(key, raw)| (LayerId::from_key(key), ContainerState::from_raw(raw)))
            })
            .collect::<Result<_, _>>()
            .map_err(|source| BpfError::Map {
                map: maps::CONTAINERS,
                source,
            })
    }

    /// Judges files under `snapshots_dir` (a snapshotter's `snapshots` directory).
    pub fn add_scope(&mut self, snapshots_dir: &Path) -> Result<LayerId, BpfError> {
        self.add_scope_with(snapshots_dir, 0)
    }

    /// A scope that always enforces, whatever the mode (the self-test's scratch overlay).
    pub(crate) fn add_enforcing_scope(
        &mut self,
        snapshots_dir: &Path,
    ) -> Result<LayerId, BpfError> {
        self.add_scope_with(snapshots_dir, scope_flags::ALWAYS_ENFORCE)
    }

    fn add_scope_with(&mut self, snapshots_dir: &Path, flags: u32) -> Result<LayerId, BpfError> {
        let io = |source| BpfError::Io {
            path: snapshots_dir.to_owned(),
            source,
        };
        let id = LayerId::of(snapshots_dir).map_err(io)?;
        if DeviceNumbering::of(snapshots_dir).map_err(io)? == DeviceNumbering::BtrfsSubvolume
            && !offsets::btrfs_types_present()
        {
            return Err(BpfError::BtrfsWithoutBtf {
                path: snapshots_dir.to_owned(),
            });
        }
        // The device's flags first: they tell the programs whether its keys carry generations,
        // which the scope's own key (and every layer's on it) already does or does not.
        let dev_flags = if crate::enforce::layer::has_generations(snapshots_dir).map_err(io)? {
            scope_dev::PRESENT | scope_dev::GENERATION
        } else {
            scope_dev::PRESENT
        };
        self.scope_devs
            .insert(id.dev, dev_flags, 0)
            .map_err(|source| BpfError::Map {
                map: maps::SCOPE_DEVS,
                source,
            })?;
        self.scopes
            .insert(id.key(), flags, 0)
            .map_err(|source| BpfError::Map {
                map: maps::SCOPES,
                source,
            })?;
        self.sync_scope_devs()?;
        Ok(id)
    }

    /// Stops judging files under the scope `id`.
    pub fn remove_scope(&mut self, id: LayerId) -> Result<(), BpfError> {
        match self.scopes.remove(&id.key()) {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            Err(source) => {
                return Err(BpfError::Map {
                    map: maps::SCOPES,
                    source,
                })
            }
        }
        self.sync_scope_devs()
    }

    /// The scopes in force.
    pub fn scopes(&self) -> Result<Vec<LayerId>, BpfError> {
        self.scopes
            .keys()
            .map(|key| key.map(LayerId::from_key))
            .collect::<Result<_, _>>()
            .map_err(|source| BpfError::Map {
                map: maps::SCOPES,
                source,
            })
    }

    /// Keeps the device fast-path set in step with the scopes: a device is present while a scope
    /// is on it. [`Self::add_scope_with`] sets a device's flags; one found without an entry here
    /// gets no generation flag, so its keys do not match (deny) until its scope is added again.
    fn sync_scope_devs(&mut self) -> Result<(), BpfError> {
        let wanted: HashSet<u64> = self.scopes()?.into_iter().map(|scope| scope.dev).collect();
        for dev in &wanted {
            if self.scope_devs.get(dev, 0).is_err() {
                self.scope_devs
                    .insert(dev, scope_dev::PRESENT, 0)
                    .map_err(|source| BpfError::Map {
                        map: maps::SCOPE_DEVS,
                        source,
                    })?;
            }
        }
        let present: Vec<u64> =
            self.scope_devs
                .keys()
                .collect::<Result<_, _>>()
                .map_err(|source| BpfError::Map {
                    map: maps::SCOPE_DEVS,
                    source,
                })?;
        for dev in present.into_iter().filter(|dev| !wanted.contains(dev)) {
            match self.scope_devs.remove(&dev) {
                Ok(()) => {}
                Err(e) if is_missing(&e) => {}
                Err(source) => {
                    return Err(BpfError::Map {
                        map: maps::SCOPE_DEVS,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Records a layer directory (`snapshots/<id>/fs`) as verified or writable. Takes effect for
    /// the next decision.
    pub fn set_layer(&mut self, layer: LayerId, state: LayerState) -> Result<(), BpfError> {
        insert_entry(
            &mut self.layers,
            maps::LAYERS,
            imagegate_common::MAX_LAYERS,
            layer,
            state.to_raw(),
        )
    }

    /// Forgets a layer: files from it are unverified again from the next decision on.
    pub fn remove_layer(&mut self, layer: LayerId) -> Result<(), BpfError> {
        remove_entry(&mut self.layers, maps::LAYERS, layer)
    }

    /// Every layer in the kernel table.
    pub fn layers(&self) -> Result<Vec<(LayerId, Option<LayerState>)>, BpfError> {
        self.layers
            .iter()
            .map(|entry| {
                entry.map(|(key, raw)| (LayerId::from_key(key), LayerState::from_raw(raw)))
            })
            .collect::<Result<_, _>>()
            .map_err(|source| BpfError::Map {
                map: maps::LAYERS,
                source,
            })
    }

    /// Drains the decision events the kernel has queued.
    pub fn drain_events(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if let Some(decision) = Decision::decode(&item, self.boot_time) {
                out.push(decision);
            }
        }
        out
    }

    /// The ring buffer's file descriptor, readable when events are queued (for poll/epoll).
    #[must_use]
    pub fn events_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd as _;
        self.events.as_fd()
    }

    /// The programs' counters, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, BpfError> {
        let read = |index: u32| -> Result<u64, BpfError> {
            self.stats
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .map_err(|source| BpfError::Map {
                    map: maps::STATS,
                    source,
                })
        };
        Ok(Stats {
            judged: read(stats::JUDGED)?,
            denied: read(stats::DENIED)?,
            audited: read(stats::AUDITED)?,
            events_lost: read(stats::EVENTS_LOST)?,
        })
    }
}

/// Moves every pin (links and maps) from `from` to `to`, then removes `from`. The BPF file
/// system cannot rename, so each object is pinned again under `to` (through an open file
/// descriptor, which keeps a link attached meanwhile) and its old pin removed.
fn move_pins(from: &Path, to: &Path) -> Result<(), BpfError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BpfError::Io { path, source }
    };
    let pinned = |path: &Path| {
        let path = path.to_owned();
        move |source| BpfError::Pin { path, source }
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    for (program, _) in PROGRAMS {
        let (old, new) = (link_pin(from, program), link_pin(to, program));
        let link = PinnedLink::from_pin(&old).map_err(open_failed(&old))?;
        link.unpin()
            .map_err(io(&old))?
            .pin(&new)
            .map_err(pinned(&new))?;
    }
    // What is left are the maps.
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let old = entry.map_err(io(from))?.path();
        let new = to.join(old.file_name().unwrap_or_default());
        MapData::from_pin(&old)
            .map_err(open_failed(&old))?
            .pin(&new)
            .map_err(pinned(&new))?;
        std::fs::remove_file(&old).map_err(io(&old))?;
    }
    std::fs::remove_dir(from).map_err(io(from))
}

/// `BpfError::OpenPin` for the pin at `path`, whatever aya's error type.
fn open_failed<E: std::error::Error + Send + Sync + 'static>(
    path: &Path,
) -> impl FnOnce(E) -> BpfError {
    let path = path.to_owned();
    move |source| BpfError::OpenPin {
        path,
        source: Box::new(source),
    }
}

/// Copies the entries of the hash map pinned as `name` under `old_dir` into `into`, if it opens
/// with `into`'s key and value layout; returns how many were copied.
fn copy_entries<K: aya::Pod, V: aya::Pod>(
    old_dir: &Path,
    name: &str,
    into: &mut HashMap<MapData, K, V>,
) -> usize {
    let Some(old) = MapData::from_pin(old_dir.join(name))
        .ok()
        .and_then(|data| HashMap::<MapData, K, V>::try_from(Map::HashMap(data)).ok())
    else {
        return 0;
    };
    old.iter()
        .flatten()
        .filter(|(key, value)| into.insert(key, value, 0).is_ok())
        .count()
}

/// What an upgrade carried over from the old pins.
#[derive(Debug, Default)]
struct Copied {
    layers: usize,
    scopes: usize,
    settings: bool,
}

/// The ABI version stamped in the settings pinned under `pin_dir`; `None` when the entry cannot
/// be read with this build's layout (a build from before the stamp, or a different layout).
fn pinned_abi(pin_dir: &Path) -> Option<u32> {
    let data = MapData::from_pin(pin_dir.join(maps::SETTINGS)).ok()?;
    let settings = Array::<MapData, Settings>::try_from(Map::Array(data)).ok()?;
    settings.get(&0, 0).ok().map(|raw| raw.abi)
}

/// Sets `key` in the `(dev, ino)`-keyed map `name`; a map at its capacity is
/// [`BpfError::TableFull`] (the daemon degrades instead of failing).
fn insert_entry(
    map: &mut HashMap<MapData, DevIno, u32>,
    name: &'static str,
    capacity: u32,
    key: LayerId,
    value: u32,
) -> Result<(), BpfError> {
    map.insert(key.key(), value, 0)
        .map_err(|source| match source {
            aya::maps::MapError::SyscallError(ref e)
                if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                BpfError::TableFull {
                    map: name,
                    capacity,
                }
            }
            source => BpfError::Map { map: name, source },
        })
}

/// Removes `key` from the map `name`; a key that is not there is fine (idempotent).
fn remove_entry(
    map: &mut HashMap<MapData, DevIno, u32>,
    name: &'static str,
    key: LayerId,
) -> Result<(), BpfError> {
    match map.remove(&key.key()) {
        Ok(()) => Ok(()),
        Err(e) if is_missing(&e) => Ok(()),
        Err(source) => Err(BpfError::Map { map: name, source }),
    }
}

/// A delete of a key that is not there: fine for an idempotent remove.
fn is_missing(error: &aya::maps::MapError) -> bool {
    match error {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// Pins need a BPF file system; mount one on `/sys/fs/bpf` when the pin directory is under it and
/// nothing is mounted there yet (minimal hosts, guests).
fn ensure_bpffs(pin_dir: &Path) -> Result<(), BpfError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    let is_bpffs =
        nix::sys::statfs::statfs(root).is_ok_and(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC);
    if !is_bpffs {
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| BpfError::Io {
            path: root.to_owned(),
            source: errno.into(),
        })?;
    }
    Ok(())
}

/// overlayfs's module BTF (needed to tell its `private_data` layout) exists only once the module
/// is loaded; containerd needs it anyway, so load it before reading offsets.
fn ensure_overlay_loaded() {
    let registered = std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|filesystems| filesystems.lines().any(|line| line.ends_with("\toverlay")));
    if !registered {
        let status = std::process::Command::new("modprobe")
            .arg("overlay")
            .status();
        tracing::info!(?status, "loaded the overlay module to read its BTF");
    }
}

/// Reads the kernel's struct offsets from BTF, loads the object with its maps pinned under
/// `pin_dir`, and passes each `wanted` program, once the kernel's verifier accepted it, to
/// `loaded` (which attaches and pins it, or does nothing for a probe).
fn load_programs(
    pin_dir: &Path,
    wanted: impl Fn(&str) -> bool,
    mut loaded: impl FnMut(&'static str, &mut Lsm) -> Result<(), BpfError>,
) -> Result<(), BpfError> {
    if OBJECT.is_empty() {
        return Err(BpfError::NoObject);
    }
    ensure_overlay_loaded();
    let vmlinux = Btf::vmlinux()?;
    let kernel_offsets = offsets::from_btf(&vmlinux, &offsets::module_btf(&vmlinux)?)?;
    let mut ebpf = EbpfLoader::new()
        .override_global(OFFSETS_GLOBAL, &kernel_offsets, true)
        .default_map_pin_directory(pin_dir)
        .load(OBJECT)?;
    let btf = AyaBtf::from_sys_fs()?;
    for (program, hook) in PROGRAMS {
        if !wanted(program) {
            continue;
        }
        let lsm: &mut Lsm = ebpf
            .program_mut(program)
            .ok_or(BpfError::MissingProgram { program })?
            .try_into()
            .map_err(|source| BpfError::Program { program, source })?;
        lsm.load(hook, &btf)
            .map_err(|source| BpfError::Program { program, source })?;
        loaded(program, lsm)?;
    }
    Ok(())
}

/// Loads (does not attach) every program into the kernel and unloads it again: proves the
/// verifier accepts them on this kernel. Maps go to a scratch pin directory that is removed.
pub fn probe_load() -> Result<String, BpfError> {
    ensure_bpffs(Path::new("/sys/fs/bpf/x"))?;
    let scratch = Path::new("/sys/fs/bpf").join(format!("imagegate-probe-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|source| BpfError::Io {
        path: scratch.clone(),
        source,
    })?;
    let result = load_programs(&scratch, |_| true, |_, _| Ok(()))
        .map(|()| format!("{} LSM programs passed the verifier", PROGRAMS.len()));
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

impl super::Backend for BpfBackend {
    type Error = BpfError;

    fn name(&self) -> &'static str {
        "bpf-lsm"
    }

    fn enforces_after_exit(&self) -> bool {
        true
    }
    fn is_full(error: &BpfError) -> bool {
        matches!(
            error,
            BpfError::TableFull {
                map: maps::LAYERS,
                ..
            }
        )
    }
    fn set_mode(&mut self, mode: Mode) -> Result<(), BpfError> {
        Self::set_mode(self, mode)
    }
    fn set_drift(&mut self, drift: Drift) -> Result<(), BpfError> {
        Self::set_drift(self, drift)
    }
    fn set_outside_image(&mut self, outside: OutsideImage) -> Result<(), BpfError> {
        Self::set_outside_image(self, outside)
    }
    fn set_container(&mut self, root: LayerId, state: ContainerState) -> Result<(), BpfError> {
        Self::set_container(self, root, state)
    }
    fn remove_container(&mut self, root: LayerId) -> Result<(), BpfError> {
        Self::remove_container(self, root)
    }
    fn containers(&self) -> Result<Vec<(LayerId, ContainerState)>, BpfError> {
        Self::containers(self)
    }
    fn add_scope(&mut self, snapshots_dir: &Path) -> Result<LayerId, BpfError> {
        Self::add_scope(self, snapshots_dir)
    }
    fn remove_scope(&mut self, id: LayerId) -> Result<(), BpfError> {
        Self::remove_scope(self, id)
    }
    fn set_layer(&mut self, layer: LayerId, state: LayerState) -> Result<(), BpfError> {
        Self::set_layer(self, layer, state)
    }
    fn remove_layer(&mut self, layer: LayerId) -> Result<(), BpfError> {
        Self::remove_layer(self, layer)
    }
    fn drain_events(&mut self) -> Vec<Decision> {
        Self::drain_events(self)
    }
    fn layers(&self) -> Result<Vec<(LayerId, LayerState)>, BpfError> {
        // An entry with a state this build does not know is listed as unverified-by-default:
        // the daemon then removes it, which fails closed.
        Ok(Self::layers(self)?
            .into_iter()
            .map(|(id, state)| (id, state.unwrap_or(LayerState::Writable)))
            .collect())
    }
}
