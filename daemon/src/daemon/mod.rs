//! `imagegate daemon`: follows containerd, verifies what it pulls, and keeps the kernel's layer
//! table true. (The event loop lands with the daemon issue; the table is its core.)

pub mod table;
