//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux` and split module BTF such as
//! `/sys/kernel/btf/overlay`): just enough to find struct member offsets and LSM hook
//! parameters. Rust eBPF has no CO-RE relocations, so the daemon reads the offsets the programs
//! need here and hands them over as a global. aya-obj parses BTF too but keeps member offsets
//! private; the format is simple enough that a reader of our own is smaller than a dependency.

use std::path::Path;

/// Why BTF could not be read or did not have what we need.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading BTF from {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {what}")]
    Malformed { what: &'static str },
    #[error("BTF has no struct `{name}`")]
    NoStruct { name: String },
    #[error("struct `{structure}` has no member `{member}` in BTF")]
    NoMember { structure: String, member: String },
    #[error("member `{structure}.{member}` is a bit field; a byte offset was needed")]
    BitField { structure: String, member: String },
    #[error("BTF has no function `{name}`")]
    NoFunction { name: String },
}

const MAGIC: u16 = 0xeb9f;

/// BTF kinds (`BTF_KIND_*`).
mod kind {
    pub const INT: u32 = 1;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// One struct/union member or function parameter.
#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset (members) or 0 (parameters).
    bit_offset: u32,
    /// Non-zero for bit fields.
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u32,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    members: Vec<Member>,
}

/// Parsed BTF: a base (vmlinux) optionally extended by split (module) BTF, sharing one id space
/// and one string space as the kernel defines them.
#[derive(Debug, Clone)]
pub struct Btf {
    /// Index 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    /// Reads the running kernel's vmlinux BTF.
    pub fn vmlinux() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"), None)
    }

    /// Reads split BTF for a module on top of this (vmlinux) BTF. `None` if the kernel exposes
    /// none for it (module not loaded, or built in: then its types are in vmlinux).
    pub fn module(&self, name: &str) -> Result<Option<Self>, BtfError> {
        let path = Path::new("/sys/kernel/btf").join(name);
        if !path.exists() {
            return Ok(None);
        }
        Self::from_file(&path, Some(self)).map(Some)
    }

    fn from_file(path: &Path, base: Option<&Btf>) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes, base)
    }

    /// Parses BTF bytes; with `base`, as split BTF continuing its type ids and strings.
    pub fn parse(bytes: &[u8], base: Option<&Btf>) -> Result<Self, BtfError> {
        let mut reader = Reader { bytes, pos: 0 };
        let magic = reader.u16()?;
        if magic != MAGIC {
            return Err(BtfError::Malformed {
                what: "bad magic (only little-endian BTF is read)",
            });
        }
        let _version = reader.u8()?;
        let _flags = reader.u8()?;
        let hdr_len = reader.u32()? as usize;
        let type_off = reader.u32()? as usize;
        let type_len = reader.u32()? as usize;
        let str_off = reader.u32()? as usize;
        let str_len = reader.u32()? as usize;
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::Malformed {
                what: "offset overflow",
            })?;
            let end = start.checked_add(len).ok_or(BtfError::Malformed {
                what: "length overflow",
            })?;
            bytes.get(start..end).ok_or(BtfError::Malformed {
                what: "section out of bounds",
            })
        };
        let type_bytes = section(type_off, type_len)?;
        let string_bytes = section(str_off, str_len)?;

        let (mut types, mut strings) = match base {
            Some(base) => (base.types.clone(), base.strings.clone()),
            None => (
                vec![Type {
                    name_off: 0,
                    kind: 0,
                    size_or_type: 0,
                    members: Vec::new(),
                }],
                Vec::new(),
            ),
        };
        strings.extend_from_slice(string_bytes);
        // Split BTF's name offsets already address base and split strings as one table (the
        // split section's strings start at the base's length), as libbpf and the kernel read
        // them: they are kept as they are.
        let mut reader = Reader {
            bytes: type_bytes,
            pos: 0,
        };
        while reader.pos < type_bytes.len() {
            let name_off = reader.u32()?;
            let info = reader.u32()?;
            let size_or_type = reader.u32()?;
            let vlen = info & 0xffff;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                kind::INT | kind::VAR | kind::DECL_TAG => reader.skip(4)?,
                kind::ARRAY => reader.skip(12)?,
                kind::STRUCT | kind::UNION => {
                    for _ in 0..vlen {
                        let member_name = reader.u32()?;
                        let type_id = reader.u32()?;
                        let offset = reader.u32()?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (offset & 0xff_ffff, offset >> 24)
                        } else {
                            (offset, 0)
                        };
                        members.push(Member {
                            name_off: member_name,
                            type_id,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                }
                kind::ENUM => reader.skip(8 * vlen as usize)?,
                kind::ENUM64 | kind::DATASEC => reader.skip(12 * vlen as usize)?,
                kind::FUNC_PROTO => {
                    for _ in 0..vlen {
                        let param_name = reader.u32()?;
                        let type_id = reader.u32()?;
                        members.push(Member {
                            name_off: param_name,
                            type_id,
                            bit_offset: 0,
                            bitfield_size: 0,
                        });
                    }
                }
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG: no extra data.
                2
                | 7
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | 16
                | kind::TYPE_TAG => {}
                _ => {
                    return Err(BtfError::Malformed {
                        what: "unknown BTF kind",
                    })
                }
            }
            types.push(Type {
                name_off,
                kind,
                size_or_type,
                members,
            });
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &str {
        let Some(rest) = self.strings.get(off as usize..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn find(&self, name: &str, kinds: &[u32]) -> Option<&Type> {
        self.types
            .iter()
            .find(|t| kinds.contains(&t.kind) && self.name(t.name_off) == name)
    }

    /// Whether a struct of this name exists (with members, not just a forward declaration).
    #[must_use]
    pub fn has_struct(&self, name: &str) -> bool {
        self.find(name, &[kind::STRUCT]).is_some()
    }

    /// The size in bytes of a struct (for stepping through an array of them).
    pub fn struct_size(&self, structure: &str) -> Result<u32, BtfError> {
        self.find(structure, &[kind::STRUCT])
            .map(|t| t.size_or_type)
            .ok_or_else(|| BtfError::NoStruct {
                name: structure.to_owned(),
            })
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of a member of a struct, following a dotted path (`d_u.d_alias`) and looking
    /// through anonymous struct/union members the way C does.
    pub fn member_offset(&self, structure: &str, path: &str) -> Result<u32, BtfError> {
        let mut current = self
            .find(structure, &[kind::STRUCT, kind::UNION])
            .ok_or_else(|| BtfError::NoStruct {
                name: structure.to_owned(),
            })?;
        let mut total_bits = 0u32;
        for segment in path.split('.') {
            let (bits, member) =
                self.find_member(current, segment, 0)
                    .ok_or_else(|| BtfError::NoMember {
                        structure: structure.to_owned(),
                        member: path.to_owned(),
                    })?;
            if member.bitfield_size != 0 || bits % 8 != 0 {
                return Err(BtfError::BitField {
                    structure: structure.to_owned(),
                    member: path.to_owned(),
                });
            }
            total_bits += bits;
            current = match self.resolve(member.type_id) {
                Some(t) => t,
                None => {
                    return Err(BtfError::Malformed {
                        what: "dangling member type",
                    })
                }
            };
        }
        Ok(total_bits / 8)
    }

    /// Finds `name` among `parent`'s members, recursing into anonymous members; returns its bit
    /// offset from the start of `parent`.
    fn find_member<'a>(
        &'a self,
        parent: &'a Type,
        name: &str,
        depth: u32,
    ) -> Option<(u32, &'a Member)> {
        if depth > 8 {
            return None;
        }
        for member in &parent.members {
            let member_name = self.name(member.name_off);
            if member_name == name {
                return Some((member.bit_offset, member));
            }
            if member_name.is_empty() {
                if let Some(inner) = self.resolve(member.type_id) {
                    if matches!(inner.kind, kind::STRUCT | kind::UNION) {
                        if let Some((bits, found)) = self.find_member(inner, name, depth + 1) {
                            return Some((member.bit_offset + bits, found));
                        }
                    }
                }
            }
        }
        None
    }

    /// The parameter names of a kernel function (e.g. `bpf_lsm_mmap_file`), to check that an LSM
    /// hook has the signature the programs were written for.
    pub fn function_params(&self, function: &str) -> Result<Vec<String>, BtfError> {
        let func = self
            .find(function, &[kind::FUNC])
            .ok_or_else(|| BtfError::NoFunction {
                name: function.to_owned(),
            })?;
        let proto = self
            .types
            .get(func.size_or_type as usize)
            .filter(|t| t.kind == kind::FUNC_PROTO)
            .ok_or(BtfError::Malformed {
                what: "function without prototype",
            })?;
        Ok(proto
            .members
            .iter()
            .map(|p| self.name(p.name_off).to_owned())
            .collect())
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], BtfError> {
        let end = self
            .pos
            .checked_add(N)
            .ok_or(BtfError::Malformed { what: "overflow" })?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(BtfError::Malformed { what: "truncated" })?;
        self.pos = end;
        let mut out = [0; N];
        out.copy_from_slice(slice);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, BtfError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, BtfError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, BtfError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn skip(&mut self, n: usize) -> Result<(), BtfError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(BtfError::Malformed { what: "overflow" })?;
        if end > self.bytes.len() {
            return Err(BtfError::Malformed { what: "truncated" });
        }
        self.pos = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running_kernel() -> Option<Btf> {
        Btf::vmlinux().ok()
    }

    #[test]
    fn reads_offsets_the_programs_need_from_the_running_kernel() {
        let Some(btf) = running_kernel() else {
            eprintln!("skipping: /sys/kernel/btf/vmlinux is not readable on this machine");
            return;
        };
        // struct file starts with a union/lock, so f_inode is never at offset 0 and is aligned.
        let f_inode = btf.member_offset("file", "f_inode").expect("file.f_inode");
        assert!(f_inode > 0 && f_inode % 8 == 0);
        // d_u.d_alias is reached through a named union; mm_struct.exe_file through an anonymous struct.
        btf.member_offset("dentry", "d_u.d_alias")
            .expect("dentry.d_u.d_alias");
        btf.member_offset("mm_struct", "exe_file")
            .expect("mm_struct.exe_file");
        btf.member_offset("vm_area_struct", "vm_flags")
            .expect("vm_area_struct.vm_flags");
        assert_eq!(
            btf.member_offset("hlist_node", "next")
                .expect("hlist_node.next"),
            0
        );
        let params = btf
            .function_params("bpf_lsm_mmap_file")
            .expect("bpf_lsm_mmap_file");
        assert_eq!(params.get(2).map(String::as_str), Some("prot"));
    }

    /// Little-endian BTF: header, types, strings.
    fn btf_bytes(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_len = u32::try_from(types.len() * 4).expect("small test BTF");
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for word in [
            24,
            0,
            type_len,
            type_len,
            u32::try_from(strings.len()).expect("small test BTF"),
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        for word in types {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn split_btf_names_address_base_and_split_strings_as_one_table() {
        // Base: [1] INT "int" (4 bytes).
        let base = btf_bytes(&[1, kind::INT << 24, 4, 32], b"\0int\0");
        let base = Btf::parse(&base, None).expect("base");
        // Split: [2] STRUCT "ovl_fs" { int numlayer at byte 4 }; its strings start at offset 5,
        // the base's string length, as the kernel numbers them.
        let split = btf_bytes(
            &[5, (kind::STRUCT << 24) | 1, 8, 12, 1, 32],
            b"ovl_fs\0numlayer\0",
        );
        let module = Btf::parse(&split, Some(&base)).expect("split");
        assert!(module.has_struct("ovl_fs"));
        assert_eq!(
            module.member_offset("ovl_fs", "numlayer").expect("member"),
            4
        );
        assert_eq!(module.struct_size("ovl_fs").expect("size"), 8);
    }

    #[test]
    fn missing_struct_and_member_are_errors() {
        let Some(btf) = running_kernel() else {
            eprintln!("skipping: /sys/kernel/btf/vmlinux is not readable on this machine");
            return;
        };
        assert!(matches!(
            btf.member_offset("no_such_struct_xyz", "a"),
            Err(BtfError::NoStruct { .. })
        ));
        assert!(matches!(
            btf.member_offset("file", "no_such_member"),
            Err(BtfError::NoMember { .. })
        ));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(Btf::parse(&[], None).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0], None).is_err());
        let mut header = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, 1000, 0, 0] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        assert!(
            Btf::parse(&header, None).is_err(),
            "type section beyond the end"
        );
        // One struct type claiming 100 members with no member data.
        let mut bytes = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, 12, 12, 1] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0u32, (4 << 24) | 100, 8] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.push(0);
        assert!(Btf::parse(&bytes, None).is_err());
    }
}
