//! A backend that records what the daemon tells it (the kernel backends cannot load on this
//! machine's kernel, or have suites of their own): the daemon's bookkeeping tests read it.

use std::{collections::HashMap, path::Path};

use imagegate::enforce::{
    Backend, ContainerState, Decision, Drift, LayerId, LayerState, Mode, OutsideImage,
};

use super::containerd::PrivateContainerd;

/// Records what it is told; with a capacity, its layer table fills up like BPF LSM's map.
#[derive(Default)]
pub struct RecordingBackend {
    pub layers: HashMap<LayerId, LayerState>,
    pub containers: HashMap<LayerId, ContainerState>,
    pub capacity: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum Never {
    #[error("layer table full")]
    Full,
}

impl Backend for RecordingBackend {
    type Error = Never;
    fn name(&self) -> &'static str {
        "recording"
    }
    fn is_full(error: &Never) -> bool {
        matches!(error, Never::Full)
    }
    fn set_mode(&mut self, _: Mode) -> Result<(), Never> {
        Ok(())
    }
    fn set_drift(&mut self, _: Drift) -> Result<(), Never> {
        Ok(())
    }
    fn add_scope(&mut self, dir: &Path) -> Result<LayerId, Never> {
        Ok(LayerId::of(dir).expect("scope"))
    }
    fn remove_scope(&mut self, _: LayerId) -> Result<(), Never> {
        Ok(())
    }
    fn set_layer(&mut self, layer: LayerId, state: LayerState) -> Result<(), Never> {
        if self.capacity.is_some_and(|capacity| {
            !self.layers.contains_key(&layer) && self.layers.len() >= capacity
        }) {
            return Err(Never::Full);
        }
        self.layers.insert(layer, state);
        Ok(())
    }
    fn remove_layer(&mut self, layer: LayerId) -> Result<(), Never> {
        self.layers.remove(&layer);
        Ok(())
    }
    fn set_outside_image(&mut self, _: OutsideImage) -> Result<(), Never> {
        Ok(())
    }
    fn set_container(&mut self, root: LayerId, trust: ContainerState) -> Result<(), Never> {
        self.containers.insert(root, trust);
        Ok(())
    }
    fn remove_container(&mut self, root: LayerId) -> Result<(), Never> {
        self.containers.remove(&root);
        Ok(())
    }
    fn containers(&self) -> Result<Vec<(LayerId, ContainerState)>, Never> {
        Ok(self.containers.iter().map(|(id, t)| (*id, *t)).collect())
    }
    fn drain_events(&mut self) -> Vec<Decision> {
        Vec::new()
    }
    fn layers(&self) -> Result<Vec<(LayerId, LayerState)>, Never> {
        Ok(self.layers.iter().map(|(id, s)| (*id, *s)).collect())
    }
}

pub fn id_of_dir_with(containerd: &PrivateContainerd, file: &str) -> LayerId {
    let dir = std::fs::read_dir(containerd.snapshots_dir())
        .expect("snapshots dir")
        .map(|entry| entry.expect("entry").path().join("fs"))
        .find(|dir| dir.join(file).exists())
        .unwrap_or_else(|| panic!("no layer holds {file}"));
    LayerId::of(&dir).expect("stat layer")
}
